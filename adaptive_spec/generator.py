"""``AdaptiveGenerator``: a drop-in around an existing ``transformers`` model's ``generate``.

    gen = AdaptiveGenerator(model, draft=small_model, tokenizer=tokenizer, policy="policies/mine.json")
    out = gen.generate(input_ids, max_new_tokens=128)                           # same arguments as HF generate
    out.sequences, out.report                                                    # tokens, what the policy did

It accepts the ``generate`` arguments that batch-size-1 decoding with these options can honour, and refuses the
others loudly (a silently ignored argument would change behaviour). ``speculation="auto"`` lets the policy decide
per round; ``"on"`` always drafts when a drafter is available; ``"off"`` is plain decoding through the same loop.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .engine import GenerationResult, SamplingParams, SpeculativeEngine, StopRule
from .engine.stopping import as_id_set
from .models import pair_id_of
from .policy.base import Policy, RequestInfo, RequestReport
from .policy.controller import AdaptivePolicy
from .policy.file import PolicyFile, default_policy_path, load_policy_file
from .runtime import eos_ids, standard_drafters
from .stats import AlphaEstimator, StatsStore

SUPPORTED = {
    "input_ids", "attention_mask", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p",
    "eos_token_id", "pad_token_id", "streamer", "generation_config", "stop_strings", "tokenizer",
    "request_class", "speculation", "max_k", "seed", "generator", "prompt_text",
}  # fmt: skip

# GenerationConfig fields whose non-default values this generator cannot honour.
UNSUPPORTED_SETTINGS = {
    "num_beams": 1, "num_return_sequences": 1, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "min_new_tokens": None, "min_length": 0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "min_p": None, "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": None, "penalty_alpha": None,
    "encoder_repetition_penalty": 1.0, "output_scores": False, "output_logits": False,
    "return_dict_in_generate": False, "output_attentions": False, "output_hidden_states": False,
}  # fmt: skip


@dataclass
class AdaptiveOutput:
    sequences: torch.Tensor  # [1, prompt + new]
    report: RequestReport
    result: GenerationResult  # rounds, timings


class AdaptiveGenerator:
    """Adaptive speculative decoding for one target model (and optionally a draft model sharing its tokenizer)."""

    def __init__(
        self,
        target: PreTrainedModel,
        draft: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        policy: Policy | PolicyFile | str | Path | None = None,
        store: StatsStore | None = None,
        *,
        pair_id: str | None = None,
        extra_drafters: tuple = (),
        head: str | Path | None = None,
        custom_draft: str | Path | None = None,
    ):
        """``head``: a draft head directory (``adaptive-spec distill --kind head``), drafter "head"; ``custom_draft``:
        a custom draft directory (``adaptive-spec distill``), drafter "custom". The policy's cost model must price
        each (``adaptive-spec calibrate --head DIR --custom-draft DIR``); both are checked against ``target``."""
        if draft is not None:
            _check_vocab(target, draft)
        self.target = target
        self.tokenizer = tokenizer
        self.engine = SpeculativeEngine(target, list(standard_drafters(target, draft)) + list(extra_drafters))
        measured = {}
        if head is not None:
            from .distill.head import attach_saved_head, head_heldout_alpha

            attach_saved_head(self.engine, head, "head")
            if alpha := head_heldout_alpha(head):  # where it was measured, and where not: the controller's cold start
                measured["head"] = alpha
        if custom_draft is not None:
            from .distill.artifact import load_custom_draft

            self.engine.add_drafter(load_custom_draft(custom_draft, target, name="custom"))
        # a drafter the caller handed over (a head, a custom draft) must be priced, not silently left unused
        handed = [d.name for d in extra_drafters] + ["head"] * (head is not None) + ["custom"] * (custom_draft is not None)
        self.policy = self._make_policy(policy, store, pair_id, draft, required=tuple(handed), measured_alpha=measured)
        if measured and isinstance(self.policy, AdaptivePolicy):  # the head's traffic classes -> the classifier's
            from .distill.head import head_heldout_prompts

            self.policy.align_measured_alpha("head", head_heldout_prompts(head))

    def _make_policy(self, policy, store, pair_id, draft, required: tuple[str, ...] = (),
                     measured_alpha: dict | None = None) -> Policy:  # fmt: skip
        if policy is not None and not isinstance(policy, (PolicyFile, str, Path)):
            return policy  # any object with start(RequestInfo) -> Session
        if isinstance(policy, (str, Path)):
            policy = load_policy_file(policy, pair_id)
        if policy is None:
            pair_id = pair_id or pair_id_of(self.target, draft)  # models from load_pair carry their pair's id
            path = default_policy_path(pair_id, self.target.device.type) if pair_id else None
            if path is None or not path.is_file():
                where = f" ({path} not found)" if path else ""
                raise ValueError(
                    f"no policy given and no default policy for this pair{where}: pass policy= (a policy file from "
                    "`adaptive-spec train-policy` or `adaptive-spec calibrate`), or pair_id= of a known pair"
                )
            policy = load_policy_file(path, pair_id)
        unpriced = [d for d in required if d not in policy.cost.drafts]
        if unpriced:
            raise ValueError(f"the policy's cost model has no measurements for drafter(s) {unpriced}: price them with "
                             "`adaptive-spec calibrate --head DIR` / `--custom-draft DIR` (or calibrate_pair(..., "
                             "heads=..., custom_drafts=...)), or pass a policy object that does not need them")  # fmt: skip
        return policy_from_file(policy, store, model_drafters=self.model_drafters(), measured_alpha=measured_alpha)

    def model_drafters(self) -> list[str]:
        """The engine's model-type drafters (prompt lookup and composites excluded)."""
        return [name for name, d in self.engine.drafters.items() if name not in ("lookup", "hybrid")]

    # --- generate ------------------------------------------------------------------------------------------------

    def generate(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> AdaptiveOutput:
        """Like ``model.generate`` (batch size 1), plus ``request_class``, ``speculation``, ``max_k``."""
        unknown = set(kwargs) - SUPPORTED
        if unknown:
            raise TypeError(f"AdaptiveGenerator.generate does not support: {', '.join(sorted(unknown))}")
        if input_ids is None:
            raise ValueError("input_ids is required")
        speculation = kwargs.pop("speculation", "auto")
        if speculation not in ("auto", "on", "off"):
            raise ValueError(f"speculation must be 'auto', 'on' or 'off', got {speculation!r}")
        max_k = kwargs.pop("max_k", None)
        if max_k is not None and (not isinstance(max_k, int) or max_k < 0):
            raise ValueError(f"max_k must be an int >= 0, got {max_k!r}")
        ids = _single_sequence(input_ids, kwargs.pop("attention_mask", None))
        config = self._resolve_config(kwargs)
        sampling = _sampling(config)
        tokenizer = kwargs.pop("tokenizer", None) or self.tokenizer
        stop = StopRule(
            config.max_new_tokens,
            as_id_set(config.eos_token_id) or eos_ids(tokenizer, self.target),
            tuple(_as_list(config.stop_strings)),
            tokenizer,
        )
        generator = kwargs.pop("generator", None)
        if generator is None and kwargs.get("seed") is not None:
            generator = torch.Generator(device=self.engine.device).manual_seed(kwargs["seed"])
        text = kwargs.get("prompt_text") or _user_text(tokenizer, ids)
        info = RequestInfo(text, ids, kwargs.get("request_class"), max_k, speculation, sampling.do_sample)
        session = self.policy.start(info)
        result = self.engine.generate(
            ids, session.decide, stop=stop, sampling=sampling, generator=generator,
            streamer=kwargs.get("streamer"), on_round=session.on_round,
            on_prefill=getattr(session, "on_prefill", None),  # optional: a session that times the machine
        )  # fmt: skip
        return AdaptiveOutput(result.sequences, session.finish(), result)

    def _resolve_config(self, kwargs: dict[str, Any]) -> GenerationConfig:
        base = kwargs.pop("generation_config", None) or self.target.generation_config
        config = copy.deepcopy(base)
        for name in ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id",
                     "pad_token_id", "stop_strings"):  # fmt: skip
            if kwargs.get(name) is not None:
                setattr(config, name, kwargs.pop(name))
        for name, neutral in UNSUPPORTED_SETTINGS.items():
            value = getattr(config, name, neutral)
            if value is not None and value != neutral:
                raise ValueError(f"generation setting {name}={value!r} is not supported by AdaptiveGenerator")
        if config.max_new_tokens is None:
            raise ValueError("max_new_tokens is required (max_length is not supported)")
        return config


def policy_from_file(policy: PolicyFile, store: StatsStore | None = None, model_drafters: list[str] | None = None,
                     measured_alpha: dict | None = None) -> AdaptivePolicy:  # fmt: skip
    """The controller a policy file describes; ``model_drafters``: those the engine has (None: all costed);
    ``measured_alpha``: per drafter, its acceptance per class measured at training (``AdaptivePolicy``)."""
    estimator = AlphaEstimator(store, pair_id=policy.pair_id, **policy.estimator.model_dump())
    classifier = None
    if policy.classifier is not None:
        from .policy.classifier import PromptClassifier

        classifier = PromptClassifier.from_json(json.dumps(policy.classifier))
    if model_drafters is not None:
        model_drafters = [d for d in model_drafters if d in policy.cost.drafts]
    return AdaptivePolicy(policy.cost, estimator, policy.controller, classifier, model_drafters, measured_alpha)


def make_adaptive(model: PreTrainedModel, **kwargs: Any) -> AdaptiveGenerator:
    """Make ``model.generate`` adaptive in one line; it returns sequences as before (``model.adaptive`` has the rest).

    The original method stays available as ``model.generate_plain``.
    """
    generator = AdaptiveGenerator(model, **kwargs)
    model.generate_plain = model.generate
    model.adaptive = generator

    def generate(input_ids=None, **kw):
        out = generator.generate(input_ids, **kw)
        generator.last_output = out
        return out.sequences

    model.generate = generate
    return generator


def _check_vocab(target: PreTrainedModel, draft: PreTrainedModel) -> None:
    t = target.config.get_text_config().vocab_size
    d = draft.config.get_text_config().vocab_size
    if d < t:
        raise ValueError(f"draft vocabulary ({d}) is smaller than the target's ({t}): they cannot share token ids")


def _single_sequence(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"batch size 1 only: got input_ids of shape {tuple(ids.shape)}")
    if attention_mask is not None:
        mask = torch.as_tensor(attention_mask).reshape(ids.shape).bool()
        if not mask.any():
            raise ValueError("attention_mask masks out the whole prompt")
        first = int(mask[0].nonzero()[0])
        if not mask[0, first:].all():
            raise ValueError("only left padding is supported in attention_mask")
        ids = ids[:, first:]
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty")
    return ids


def _sampling(config: GenerationConfig) -> SamplingParams:
    if not config.do_sample:
        return SamplingParams()
    top_k = 50 if config.top_k is None else config.top_k  # transformers' default when unset
    return SamplingParams(True, config.temperature if config.temperature is not None else 1.0, top_k,
                          config.top_p if config.top_p is not None else 1.0)  # fmt: skip


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _user_text(tokenizer: PreTrainedTokenizerBase | None, ids: torch.Tensor) -> str | None:
    """The last user turn of a ChatML prompt (what the classifier was trained on), else the decoded prompt."""
    if tokenizer is None:
        return None
    text = tokenizer.decode(ids[0], skip_special_tokens=False)
    marker = "<|im_start|>user\n"
    if marker in text:
        text = text.rsplit(marker, 1)[1].split("<|im_end|>", 1)[0]
    return text
