"""The command line: bad input fails in one line with exit code 2, before any model work; commands run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adaptive_spec.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
SMALL_TRACES = ROOT / "notebooks" / "data" / "traces_small.jsonl"


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "   "], "prompt"),
        (["generate", "hi", "--k", "-1"], "k:"),
        (["generate", "hi", "--temperature", "-0.5"], "temperature"),
        (["generate", "hi", "--top-p", "1.5"], "top_p"),
        (["generate", "hi", "--top-p", "0"], "top_p"),
        (["generate", "hi", "--mode", "fast"], "mode"),
        (["models", "fetch", "--pair", "nope"], "unknown model pair"),
        (["train-policy", "missing.jsonl", "--out", "x.json"], "not found"),
        (["calibrate", "--head", "no-such-head-dir"], "no draft head"),
        (["calibrate", "--custom-draft", "no-such-draft-dir"], "no custom draft"),
        (["calibrate", "--seed-policy", "no-such-policy.json"], "policy file not found"),  # before measuring
        (["profile", str(SMALL_TRACES), "--head", "no-such-head-dir"], "no draft head"),  # before models load
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) <= 2 and message in result.output  # rich may wrap one long line


@pytest.mark.parametrize("command", [["generate", "hi"], ["calibrate"], ["demo"], ["profile", str(SMALL_TRACES)]])
def test_an_unknown_draft_quantization_is_refused_before_models_load(command):
    result = runner.invoke(app, command + ["--draft-quantize", "int4"])
    assert result.exit_code == 2 and "'int4': choose from none, int8" in result.output


def test_train_policy_on_small_traces(tmp_path):
    out = tmp_path / "policy.json"
    result = runner.invoke(app, ["train-policy", str(SMALL_TRACES), "--out", str(out),
                                 "--policy", str(ROOT / "policies" / "qwen2.5-coder-cpu.json")])  # fmt: skip
    assert result.exit_code == 0, result.output
    from adaptive_spec.policy.file import load_policy_file

    policy = load_policy_file(out, "qwen2.5-coder")
    assert policy.controller.classes and policy.classifier is not None
    assert "regret" in result.output


def test_train_policy_refit_keeps_the_classifier_and_fits_on_every_trace(tmp_path):
    """After `calibrate` changed a policy's cost model: its controller re-fitted on new traces (all of them),
    its classifier and estimator kept, the refit recorded beside what it was first trained on."""
    from adaptive_spec.policy.file import load_policy_file

    base_path = ROOT / "policies" / "qwen2.5-coder-cpu.json"
    lines, per_class = [], {}
    for line in SMALL_TRACES.read_text().splitlines():
        cls = json.loads(line)["class"]
        if cls in ("math", "qa", "translation") and per_class.get(cls, 0) < 2:
            per_class[cls] = per_class.get(cls, 0) + 1
            lines.append(line)
    traces = tmp_path / "traces.jsonl"
    traces.write_text("\n".join(lines) + "\n")
    out = tmp_path / "refit.json"
    result = runner.invoke(app, ["train-policy", str(traces), "--out", str(out), "--policy", str(base_path),
                                 "--refit"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "In-sample replay" in result.output
    base, refit = load_policy_file(base_path), load_policy_file(out)
    assert refit.classifier == base.classifier and refit.estimator == base.estimator and refit.cost == base.cost
    assert set(refit.controller.classes) == {"math", "qa", "translation"}
    record = refit.trained_on["refits"][-1]
    assert {c: len(ids) for c, ids in record["requests"].items()} == {"math": 2, "qa": 2, "translation": 2}
    assert refit.trained_on["train_requests"] == base.trained_on["train_requests"]  # the first fit, kept
    assert refit.description.startswith(base.description) and "--refit on 6 traces" in refit.description

    result = runner.invoke(app, ["train-policy", str(traces), "--out", str(out), "--refit"])
    assert result.exit_code == 2 and "--policy" in result.output


def test_report_tables_are_wide_when_piped():
    """Without a terminal rich assumes 80 columns and folds a 7-column report into word stubs."""
    from rich.table import Table

    from adaptive_spec.report_console import PIPED_WIDTH, report_console

    table = Table("class", "classified as", "alpha", "decisions (rounds)", "target tok/s", "adaptive tok/s", "speedup")
    decisions = "lookup.streak:4 14, lookup.n1:4 4, lookup.n2:4 3"  # a row of `adaptive-spec demo`
    table.add_row("summarization", "summarization", "0.77", decisions, "2.88", "8.11", "2.82x")
    result = runner.invoke(app, ["--help"])  # the CLI runs where stdout is not a terminal (so does pytest, below)
    assert result.exit_code == 0
    console = report_console()
    assert not console.is_terminal and console.width == PIPED_WIDTH
    with console.capture() as captured:
        console.print(table)
    assert decisions in captured.get() and "summarization" in captured.get()


def test_train_policy_cli_default_margin_is_the_library_default():
    import inspect

    from adaptive_spec.cli import train_policy
    from adaptive_spec.policy.train import CLASS_MARGIN

    assert inspect.signature(train_policy).parameters["class_margin"].default == CLASS_MARGIN


def test_calibrate_tells_a_machine_where_wide_forwards_cost_their_tokens(tmp_path, monkeypatch):
    """The measurement itself is stubbed with a table measured on an AVX2-only CPU: the command writes it and says
    why speculation will rarely run there."""
    from types import SimpleNamespace

    import adaptive_spec.cli as cli
    from adaptive_spec.policy.cost import CostModel

    saved = json.loads((ROOT / "benchmarks" / "results" / "cost_avx2.json").read_text())["cost_model"]
    monkeypatch.setattr(cli, "_models", lambda *a, **k: SimpleNamespace(pair_id="qwen2.5-coder"))
    monkeypatch.setattr(cli, "_calibrate", lambda *a, **k: CostModel.model_validate(saved))
    out = tmp_path / "policy.json"
    result = runner.invoke(app, ["calibrate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "4-token verify costs 2.8 plain steps" in result.output and "Measured on cpu: AMD EPYC" in result.output
    assert out.is_file()


@pytest.mark.real_model
@pytest.mark.slow
def test_generate_streams_and_reports():
    result = runner.invoke(app, ["generate", "Write a Python function that adds two numbers.", "--mode", "hybrid",
                                 "--k", "4", "--max-new-tokens", "12", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["new_tokens"] == 12 and summary["rounds"] >= 1


@pytest.mark.real_model
@pytest.mark.slow
def test_prompt_beyond_context_window():
    result = runner.invoke(app, ["generate", "hi", "--max-new-tokens", "40000"])
    assert result.exit_code == 2 and "context window" in result.output


@pytest.mark.real_model
@pytest.mark.slow
def test_profile_is_resumable_and_reports(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "Summarize: the cat sat on the mat. The cat sat on the mat.", "class": "sum"}) + "\n"
        + "{broken\n"
        + json.dumps({"prompt": "Write a haiku about rain.", "class": "poem"}) + "\n"
    )  # fmt: skip
    out = tmp_path / "prof"
    args = ["profile", str(prompts), "--out", str(out), "--max-new-tokens", "12"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "p.jsonl:2" in first.output  # the malformed line is named, the rest processed
    for name in ("traces.jsonl", "report.md", "report.json", "alpha_by_class.png", "speedup_vs_k.png"):
        assert (out / name).is_file(), name
    traced = (out / "progress.jsonl").read_text()
    second = runner.invoke(app, args)  # resumes: nothing is traced again
    assert second.exit_code == 0 and (out / "progress.jsonl").read_text() == traced
