"""Acceptance rules: which proposed tokens the target keeps, and the token it adds after them.

Given proposals d_1..d_n and the target's logits at the pending token and at each proposal (n + 1 rows; row i
is the target's next-token distribution after d_1..d_i):

- greedy: accept d_i while it equals the target's argmax; the added token is the argmax at the first mismatch
  (*recovered*) or after the last proposal (*bonus*). Output equals greedy decoding of the target.
- sampling (Leviathan et al. 2023, Chen et al. 2023): accept d_i with probability min(1, p_target(d_i) /
  q_draft(d_i)); at the first rejection draw the recovered token from norm(max(0, p_target - q_draft)); if all
  are accepted draw the bonus from p_target. Output is distributed exactly as sampling from the target.
  A deterministic drafter has q_draft = one-hot(d_i): accept with probability p_target(d_i), and on rejection
  draw from p_target with d_i removed.
"""

from __future__ import annotations

import torch

from .sampling import SamplingParams, distribution, sample, uniform


def accept_greedy(proposed: torch.Tensor, target_logits: torch.Tensor) -> tuple[int, torch.Tensor]:
    """proposed: [n], target_logits: [n + 1, V] -> (accepted count, added token [])."""
    choice = target_logits.argmax(dim=-1)  # [n + 1]
    n = proposed.numel()
    mismatch = (proposed != choice[:n]).nonzero()
    accepted = int(mismatch[0]) if mismatch.numel() else n
    return accepted, choice[accepted]


def accept_sampled(
    proposed: torch.Tensor,
    q_draft: torch.Tensor | None,
    target_logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
) -> tuple[int, torch.Tensor]:
    """proposed: [n], q_draft: [n, V] or None (deterministic), target_logits: [n + 1, V] -> (accepted, added)."""
    p_target = distribution(target_logits, params)  # [n + 1, V]
    n = proposed.numel()
    rows = torch.arange(n, device=proposed.device)
    p = p_target[rows, proposed]  # [n]
    q = q_draft[rows, proposed] if q_draft is not None else torch.ones_like(p)
    ratio = (p / q).tolist()
    for i in range(n):
        # 1. accept d_i with probability min(1, p/q)
        if uniform(generator, proposed.device) < ratio[i]:
            continue
        # 2. rejected: draw the recovered token from the residual distribution
        residual = p_target[i].clone()
        if q_draft is not None:
            residual = (residual - q_draft[i]).clamp_min_(0)
        else:
            residual[proposed[i]] = 0
        total = residual.sum()
        if total <= 0:  # p == q exactly (up to rounding): any draw from p is correct
            residual = p_target[i]
        return i, sample((residual / residual.sum())[None], generator)[0]
    # 3. all accepted: the bonus token comes from the target after the last proposal
    return n, sample(p_target[n][None], generator)[0]
