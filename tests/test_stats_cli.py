"""CLI smoke tests: ``stats`` and ``stats reset`` against a live private redis-server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adaptive_spec.records import RoundRecord
from adaptive_spec.stats import AlphaEstimator, RedisSettings
from adaptive_spec.stats.keys import StatsKey, redis_key
from adaptive_spec.stats_cli import stats_app
from tests.redis_server import redis_server  # noqa: F401 - fixture

pytestmark = [pytest.mark.redis, pytest.mark.timeout(60)]


def rnd(proposed: int, accepted: int, drafter: str = "model") -> RoundRecord:
    return RoundRecord(drafter, max(proposed, 1), proposed, accepted, accepted + 1, 100, 0.001, 0.002)


@pytest.fixture
def populated(redis_server):
    from adaptive_spec.stats.redis_store import RedisStatsStore

    est = AlphaEstimator(RedisStatsStore(RedisSettings(url=redis_server.url)), "qwen-1.5b+0.5b", half_life_tokens=None)
    for i in range(100):
        est.observe("code", rnd(4, 4 if i % 2 else 1))
        est.observe("code", rnd(0, 0, "lookup") if i % 4 else rnd(3, 3, "lookup"))
        est.observe("chat", rnd(4, 1))
    est.observe_request("code", [rnd(4, 3)] * 3)
    assert est.flush(5.0)
    est.close()
    redis_server.client().hset(redis_key("adaptive-spec", StatsKey("qwen-1.5b+0.5b", "bad", "model")), "schema", "9")
    return redis_server


def test_stats_json(populated):
    result = CliRunner().invoke(stats_app, ["--redis", populated.url, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = {(r["request_class"], r["drafter"]): r for r in payload["keys"]}
    assert set(rows) == {("code", "model"), ("code", "lookup"), ("chat", "model")}
    code = rows[("code", "model")]
    assert code["total_rounds"] == 103 and code["total_draft_tokens"] == 412
    assert code["alpha_observed"] == pytest.approx((50 * 4 + 50 * 1 + 9) / 412)
    lo, hi = code["alpha_interval"]
    assert lo < code["alpha"] < hi
    assert code["positions"][0]["position"] == 1 and code["positions"][0]["tried"] == 103
    assert code["request_alpha"] == pytest.approx(0.75)
    assert rows[("code", "lookup")]["hit_rate"] == pytest.approx(0.25)
    assert 0 <= code["age_s"] < 60
    assert [i["request_class"] for i in payload["invalid"]] == ["bad"]


def test_stats_table(populated):
    result = CliRunner().invoke(stats_app, ["--redis", populated.url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("code", "chat", "lookup", "1:", "ignored invalid key"):
        assert text in result.output
    other = CliRunner().invoke(stats_app, ["--redis", populated.url, "--pair", "no-such-pair"])
    assert other.exit_code == 0 and "No statistics" in other.output


def test_reset_asks_first(populated):
    runner = CliRunner()
    declined = runner.invoke(stats_app, ["reset", "--class", "code", "--redis", populated.url], input="n\n")
    assert declined.exit_code == 1 and "nothing deleted" in declined.output
    assert len(json.loads(runner.invoke(stats_app, ["--redis", populated.url, "--json"]).stdout)["keys"]) == 3
    accepted = runner.invoke(stats_app, ["reset", "--class", "code", "--redis", populated.url], input="y\n")
    assert accepted.exit_code == 0 and "Deleted 2 key(s)" in accepted.output
    left = json.loads(runner.invoke(stats_app, ["--redis", populated.url, "--json"]).stdout)["keys"]
    assert [(r["request_class"], r["drafter"]) for r in left] == [("chat", "model")]
    forced = runner.invoke(stats_app, ["--redis", populated.url, "reset", "--class", "chat", "--yes"])
    assert forced.exit_code == 0 and "Deleted 1 key(s)" in forced.output
    nothing = runner.invoke(stats_app, ["reset", "--class", "chat", "--yes", "--redis", populated.url])
    assert nothing.exit_code == 0 and "Nothing to reset" in nothing.output


def test_bad_url_is_one_line_and_unreachable_redis_is_an_error(redis_server):
    runner = CliRunner()
    bad = runner.invoke(stats_app, ["--redis", "http://localhost:1"])
    assert bad.exit_code == 2
    assert bad.stderr.strip() == "error: url: scheme must be redis://, rediss:// or unix:// (got 'http')"
    env_bad = runner.invoke(stats_app, [], env={"ADAPTIVE_SPEC_REDIS_SOCKET_TIMEOUT_S": "-1"})
    assert env_bad.exit_code == 2 and env_bad.stderr.count("\n") == 1
    redis_server.kill()
    down = runner.invoke(stats_app, ["--redis", redis_server.url])
    assert down.exit_code == 1 and "cannot read Redis" in down.stderr
