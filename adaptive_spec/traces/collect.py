"""Collecting traces: one target run per request plus two cheap draft passes (see ``format`` for the fields).

1. The target's greedy output, generated with the engine (lookup-else-draft speculation: fastest to collect).
2. One teacher-forced draft forward over prompt + output gives the draft's greedy token, its probability and its
   second choice at every position; match lengths follow from runs of agreement.
3. Where the draft is wrong but still confident, a short branch of draft steps records how long a confidence
   threshold would let it keep proposing (rolled back after each branch).
4. Prompt lookup is deterministic on the context, so its proposal is computed directly at every position.
5. Every draft head attached to the engine (``attach_head``): one target forward over prompt + output taps the
   features of every position, then the head drafts its own chain from each position (until a probability below
   ``theta_min``): the head's ``chain`` columns, since its later tokens follow its own predicted features.
"""

from __future__ import annotations

import hashlib
import time

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..engine import PromptLookupDrafter, SpeculativeEngine, StopRule, fixed
from ..engine.drafters import DraftRequest
from ..engine.head import HeadDrafter
from ..engine.kv import CachedLM
from ..runtime import eos_ids
from .format import DraftColumns, LookupColumns, RequestTrace

DEPTH = 16
THETA_MIN = 0.3  # thresholds at or above this replay exactly; lower ones approximately
BRANCH = 8  # longest divergent branch recorded (draft steps after its first wrong token)


def request_id(prompt: str, request_class: str) -> str:
    return hashlib.sha256(f"{request_class}\0{prompt}".encode()).hexdigest()[:16]


class TraceCollector:
    """Produces ``RequestTrace``s for one target/draft pair."""

    def __init__(
        self,
        engine: SpeculativeEngine,
        draft: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None,
        pair_id: str,
        dtype: str,
        depth: int = DEPTH,
        theta_min: float = THETA_MIN,
    ):
        if "hybrid" not in engine.drafters:
            raise ValueError("the engine needs the standard drafters (runtime.standard_drafters)")
        self.engine = engine
        self.draft = CachedLM(draft, engine.target.vocab_size)
        self.tokenizer = tokenizer
        self.pair_id = pair_id
        self.dtype = dtype
        self.depth = depth
        self.theta_min = theta_min
        self.lookup = PromptLookupDrafter()
        self.heads = {name: d for name, d in engine.drafters.items() if isinstance(d, HeadDrafter)}

    def trace(self, prompt_ids: torch.Tensor, prompt: str, request_class: str, max_new_tokens: int,
              rid: str | None = None) -> RequestTrace:  # fmt: skip
        ids = prompt_ids.view(-1).to(self.engine.device)
        # 1. the target's output
        stop = StopRule(max_new_tokens, eos_ids(self.tokenizer, self.engine.target.model))
        start = time.perf_counter()
        out = self.engine.generate(ids, fixed("hybrid", 8, 0.5), stop=stop)
        target_s = time.perf_counter() - start
        target = out.new_tokens
        # 2. the draft's greedy token and its probability at every position, in one forward
        top, p, second = self._draft_teacher_forced(ids, target)
        match = _runs(top == target, self.depth)
        # 3. how far a confident wrong draft keeps going
        diverge = self._divergent_branches(ids, target, top, p)
        # 4. prompt lookup at every position
        lookup_len, lookup_match, lookup_ngram = self._lookup(ids, target)
        # 5. each draft head's own chain at every position
        drafts = {
            "model": DraftColumns(top=top.tolist(), p=[round(x, 5) for x in p.tolist()], match=match.tolist(),
                                  diverge=diverge, second=second.tolist())  # fmt: skip
        }
        for name, head in self.heads.items():
            drafts[name] = self._head_columns(head, ids, target)
        return RequestTrace(
            schema="adaptive-spec/trace",
            pair_id=self.pair_id,
            dtype=self.dtype,
            request_id=rid or request_id(prompt, request_class),
            **{"class": request_class},
            prompt=prompt,
            prompt_ids=ids.tolist(),
            max_new_tokens=max_new_tokens,
            stop_reason=out.stop_reason,
            depth=self.depth,
            theta_min=self.theta_min,
            target=target.tolist(),
            drafts=drafts,
            lookup=LookupColumns(len=lookup_len, match=lookup_match, ngram=lookup_ngram),
            target_s=round(target_s, 3),
        )

    @torch.inference_mode()
    def _draft_teacher_forced(self, ids: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Draft argmax, its probability and the second choice for each position: rows at prompt[-1], target[0],
        ..., target[-2]."""
        sequence = torch.cat([ids, target[:-1]])
        rows = torch.arange(ids.numel() - 1, sequence.numel(), device=ids.device)
        logits = self.draft.model(input_ids=sequence[None], use_cache=False, logits_to_keep=rows).logits[0]
        probs = torch.softmax(logits[:, : self.draft.vocab_size].float(), dim=-1)
        best = probs.topk(2, dim=-1)
        return best.indices[:, 0], best.values[:, 0], best.indices[:, 1]

    @torch.inference_mode()
    def _divergent_branches(self, ids, target, top, p) -> dict[int, list[float]]:
        wrong = ((top != target) & (p >= self.theta_min)).nonzero().flatten().tolist()
        branches: dict[int, list[float]] = {}
        if not wrong:
            return branches
        lm = self.draft
        lm.reset()
        sequence = torch.cat([ids, target])
        for q in wrong:
            # the cache must hold exactly prompt + target[:q]
            lm.forward(sequence[lm.seen : ids.numel() + q], last_only=True)
            token, probs = top[q], []
            for _ in range(min(self.depth - 1, BRANCH)):
                logits = lm.forward(token.view(1), last_only=True)[-1]
                pr = torch.softmax(logits.float(), dim=-1)
                prob, token = pr.max(dim=-1)
                probs.append(round(prob.item(), 5))
                if prob.item() < self.theta_min:
                    break
            lm.rollback(lm.seen - (ids.numel() + q))
            branches[q] = probs
        lm.reset()
        return branches

    @torch.inference_mode()
    def _head_columns(self, head: HeadDrafter, ids: torch.Tensor, target: torch.Tensor) -> DraftColumns:
        """The head's greedy chain from every position, over the features of one teacher-forced target forward
        (the head's cache of true pairs grows position by position; its drafted positions are rolled back by the
        next ``propose``, as in a request)."""
        sequence = torch.cat([ids, target])
        lm = self.engine.target
        lm.reset()
        lm.forward(sequence[:-1], last_only=True)  # the head's tap stores every position's feature
        head.reset()
        request = DraftRequest(self.depth, threshold=self.theta_min, sibling_below=1.0)  # every second choice
        top, p, match, chains, second = [], [], [], [], []
        for i in range(target.numel()):
            draft = head.propose(sequence[: ids.numel() + i], request)
            truth = target[i : i + len(draft)]
            agree = draft.tokens[: truth.numel()] == truth
            m = int(agree.long().cumprod(0).sum()) if agree.numel() else 0
            top.append(int(draft.tokens[0]) if len(draft) else -1)
            p.append(round(draft.probs[0], 5) if len(draft) else 0.0)
            match.append(m)
            chains.append([round(x, 5) for x in draft.probs])
            second.append(dict(draft.siblings).get(m, -1))  # its second choice at its first wrong token
        lm.reset()
        head.reset()
        return DraftColumns(top=top, p=p, match=match, chain=chains, second=second)

    def _lookup(self, ids: torch.Tensor, target: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
        sequence = torch.cat([ids, target])
        lengths, matches, ngrams = [], [], []
        for i in range(target.numel()):
            proposal, n = self.lookup.match(sequence[: ids.numel() + i], self.depth)
            truth = target[i : i + proposal.numel()]
            agree = proposal[: truth.numel()] == truth
            lengths.append(proposal.numel())
            matches.append(int(agree.long().cumprod(0).sum()) if agree.numel() else 0)
            ngrams.append(n)
        return lengths, matches, ngrams


def _runs(agree: torch.Tensor, cap: int) -> torch.Tensor:
    """Length of the run of True starting at each index, capped. agree: [N] bool -> [N] long."""
    out = torch.zeros_like(agree, dtype=torch.long)
    run = 0
    for i in range(agree.numel() - 1, -1, -1):
        run = run + 1 if agree[i] else 0
        out[i] = min(run, cap)
    return out
