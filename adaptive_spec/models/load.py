"""Loading target and draft models for speed on the machine at hand.

What was measured (2 threads, this project's CPU machines, context 200; see README "Loading"):
transformers 5.x can keep GGUF weights packed only with a matmul kernel fetched from the Hugging Face hub; without
it (no hub, or no published kernel for the device) it dequantizes the whole model at load time, in Python, which
takes ~50 s for the 1.5B target. The dense result in bfloat16 runs a forward in ~210 ms (target) and ~93 ms
(draft); float32 is ~2x slower. So GGUF files are dequantized once, saved as safetensors in the cache, and later
loads take well under a second (memory-mapped). bfloat16 is the default; float32 is for exactness tests.

A draft's forward on CPU streams its weights from memory for each token, so its cost follows their bytes:
``quantize_draft`` (int8 weights, ``draft_quantize="int8"``) measured the 0.5B draft at 35 ms per token against
96 ms in bfloat16, acceptance 0.47 vs 0.54 at k=4 (``benchmarks/results/draft_int8.md``). Only the draft: the
engine verifies every drafted token with the target, so outputs do not depend on the draft's precision.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from ..logs import get_logger
from ..settings import Settings, get_settings
from .cache_lock import build_once
from .fetch import fetch_pair
from .pairs import DEFAULT_PAIR, get_pair

log = get_logger(__name__)

# Our own progress and log lines say what happens; transformers' per-load bars and its GGUF dtype hint (which
# does not hold where the weights end up dense, see above) are noise here.
hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
DRAFT_QUANTIZATIONS = ("none", "int8")
# load_pair marks the models it returns with their pair id, so that AdaptiveGenerator(target, draft) finds the
# pair's committed policy without being told (pair_id_of)
PAIR_ID_ATTRIBUTE = "adaptive_spec_pair_id"


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded, or a pair does not fit together."""


@dataclass
class LoadedPair:
    target: PreTrainedModel
    draft: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    pair_id: str
    dtype: str


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (default: the CPUs this process may run on)."""
    n = threads or get_settings().threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """A model given as a GGUF file, a directory holding one GGUF file, or a transformers model directory."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf file; pass a GGUF file or a model directory")
        return path.parent, path.name
    if path.is_dir():
        if (path / "config.json").is_file():
            return path, None
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return path, ggufs[0].name
        raise ModelLoadError(f"{path} has no config.json and {len(ggufs)} .gguf files; point at one of them")
    raise ModelLoadError(f"model not found: {path}")


def _dense_dir(directory: Path, gguf_file: str, kind: str, settings: Settings) -> Path:
    stat = (directory / gguf_file).stat()
    return settings.cache / "dense" / f"{Path(gguf_file).stem}-{stat.st_size}-{stat.st_mtime_ns}-{kind}"


def _build_once(target: Path, marker: str, save: Callable[[Path], Any]) -> None:
    """Unless ``target/marker`` exists, ``save`` into ``target`` (atomically), one process at a time."""
    target.parent.mkdir(parents=True, exist_ok=True)
    build_once(target, (target / marker).is_file, lambda: _atomic_save(target, save))


def _atomic_save(target: Path, save: Callable[[Path], Any]) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.replace(target)


def load_model(
    spec: str | os.PathLike, dtype: str = "bfloat16", device: str = "auto", settings: Settings | None = None
) -> PreTrainedModel:
    """Load a causal LM for inference; GGUF files are converted once and cached as safetensors."""
    settings = settings or get_settings()
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    directory, gguf_file = resolve(spec)
    if gguf_file is not None:
        dense = _dense_dir(directory, gguf_file, dtype, settings)
        _build_once(dense, "config.json", lambda out: _convert(directory, gguf_file, dtype, out))
        directory = dense
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=DTYPES[dtype])
    model.to(pick_device(device)).eval().requires_grad_(False)
    return model


def _convert(directory: Path, gguf_file: str, dtype: str, out: Path) -> None:
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, dtype=DTYPES[dtype])
    _strip_quantization(model)
    model.save_pretrained(out)
    log.info("gguf_converted", file=gguf_file, dtype=dtype, seconds=round(time.perf_counter() - start, 1))


def _strip_quantization(model: PreTrainedModel) -> None:
    """The weights are dense now; drop the GGUF loader's marker so the model saves as a plain checkpoint."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None


def load_tokenizer(spec: str | os.PathLike, settings: Settings | None = None) -> PreTrainedTokenizerBase:
    settings = settings or get_settings()
    directory, gguf_file = resolve(spec)
    if gguf_file is None:
        return AutoTokenizer.from_pretrained(directory)
    cached = _dense_dir(directory, gguf_file, "tokenizer", settings)
    _build_once(cached, "tokenizer_config.json",
                lambda out: AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file).save_pretrained(out))
    return AutoTokenizer.from_pretrained(cached)


def check_compatible(target_tok: PreTrainedTokenizerBase, draft_tok: PreTrainedTokenizerBase) -> None:
    """Speculation needs the draft to speak the target's token ids."""
    if target_tok.get_vocab() != draft_tok.get_vocab():
        a, b = target_tok.get_vocab(), draft_tok.get_vocab()
        differ = sum(1 for t, i in a.items() if b.get(t) != i) + len(set(b) - set(a))
        raise ModelLoadError(
            f"target and draft tokenizers differ ({len(a)} vs {len(b)} tokens, {differ} ids disagree): "
            "a draft must share the target's tokenizer"
        )


def load_pair(
    pair: str = DEFAULT_PAIR,
    target: str | os.PathLike | None = None,
    draft: str | os.PathLike | None = None,
    dtype: str = "bfloat16",
    device: str = "auto",
    with_draft: bool = True,
    settings: Settings | None = None,
    draft_quantize: str = "none",
) -> LoadedPair:
    """The reference pair (fetched if needed) or any local target/draft; checks the tokenizers match.

    ``draft_quantize="int8"``: the draft's linear layers in int8 (``quantize_draft``, CPU); the pair id then names
    it (``<pair>+int8-draft``), so that a policy calibrated with the bfloat16 draft's costs is not used with it."""
    settings = settings or get_settings()
    check_draft_quantization(draft_quantize)
    custom = True
    if target is None or (with_draft and draft is None):
        ref_target, ref_draft = fetch_pair(get_pair(pair), settings.models_dir)
        target = target or ref_target
        draft = draft or ref_draft
        custom = Path(target) != ref_target or (with_draft and Path(draft) != ref_draft)
    pair_id = _custom_pair_id(target, draft if with_draft else None) if custom else pair
    tokenizer = load_tokenizer(target, settings)
    draft_model = None
    if with_draft:
        check_compatible(tokenizer, load_tokenizer(draft, settings))
        draft_model = load_model(draft, dtype, device, settings)
        if draft_quantize == "int8":
            draft_model = quantize_draft(draft_model)
        pair_id = quantized_pair_id(pair_id, draft_quantize)
    target_model = load_model(target, dtype, device, settings)
    for model in (target_model, draft_model):
        if model is not None:
            setattr(model, PAIR_ID_ATTRIBUTE, pair_id)
    return LoadedPair(target_model, draft_model, tokenizer, pair_id, dtype)


def int8_pair_id(pair_id: str) -> str:
    """The id of a pair whose draft runs in int8: its costs, hence its policy, are not the bfloat16 draft's."""
    return f"{pair_id}+int8-draft"


def quantized_pair_id(pair_id: str, draft_quantize: str) -> str:
    """The id ``load_pair(..., draft_quantize=...)`` gives a pair: known before loading, so a caller can check a
    policy file or traces against it first."""
    return int8_pair_id(pair_id) if draft_quantize == "int8" else pair_id


def pair_id_of(target: PreTrainedModel, draft: PreTrainedModel | None = None) -> str | None:
    """The pair id ``load_pair`` gave these models; None unless every one given came from the same pair (a
    reference target beside a draft of another pair has no pair policy). A draft of the target's pair quantized
    afterwards (``quantize_draft``) names the int8 pair."""
    target_id = getattr(target, PAIR_ID_ATTRIBUTE, None)
    if draft is None or target_id is None:
        return target_id
    draft_id = getattr(draft, PAIR_ID_ATTRIBUTE, None)
    return draft_id if draft_id in (target_id, int8_pair_id(target_id)) else None


def check_draft_quantization(name: str) -> None:
    """Refuse an unknown ``draft_quantize`` value before any model is fetched or loaded."""
    if name not in DRAFT_QUANTIZATIONS:
        raise ModelLoadError(f"unknown draft quantization {name!r} (choose from {', '.join(DRAFT_QUANTIZATIONS)})")


def quantize_draft(model: PreTrainedModel) -> PreTrainedModel:
    """A CPU draft model with int8 weights in its linear layers (dynamic quantization: activations quantized per
    forward; everything else in float32), returned in place of ``model``.

    Lossless for generation: the engine verifies every drafted token with the target, so the draft's precision
    changes how many are accepted, never the output. CPU only (torch's dynamic int8 kernels)."""
    devices = {p.device.type for p in model.parameters()}
    if devices != {"cpu"}:
        raise ModelLoadError(f"int8 draft quantization runs on CPU only (torch dynamic quantization); the draft is on "
                             f"{', '.join(sorted(devices))}: keep it in bfloat16 there")  # fmt: skip
    with warnings.catch_warnings():  # torch.ao's eager quantization is deprecated in favour of torchao (not a dep)
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(model.float(), {torch.nn.Linear}, torch.qint8, inplace=True)
    mark = getattr(quantized, PAIR_ID_ATTRIBUTE, None)
    if mark is not None and not mark.endswith(int8_pair_id("")):  # a draft from load_pair now prices as int8
        setattr(quantized, PAIR_ID_ATTRIBUTE, int8_pair_id(mark))
    return quantized.eval().requires_grad_(False)


def _custom_pair_id(target: Any, draft: Any) -> str:
    names = [Path(target).name] + ([Path(draft).name] if draft is not None else [])
    return "+".join(names)
