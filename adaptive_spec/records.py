"""The round record: the one piece of data that flows from the engine to statistics and policy.

Vocabulary (used the same way everywhere in this package):

- *proposed*: draft tokens the drafter offered in a round (``<= k``; a drafter may stop early).
- *accepted*: proposed tokens the target agreed with, counted from the first; the rest are *rejected*.
- *bonus*: the token the target adds after the accepted prefix when every proposal was accepted.
- *recovered*: the token the target adds in place of the first rejected proposal.
- *extension*: tokens prompt lookup appended after a drafter's proposals, continuing them, verified in the same
  forward; they count neither as proposed nor as accepted (the drafter's acceptance stays its own), but as
  ``extension`` and ``extension_accepted`` (nonzero only when every proposal was accepted).
- *siblings*: a model drafter's second choices at uncertain positions, verified beside its first choices in the
  same forward (greedy only); ``sibling_accepted`` is 1 when the first rejected proposal's sibling was the target's
  token (it replaces the proposal, and the target adds its token after it). Like the extension, not counted as
  proposed or accepted.
- *guess*: a padded plain step's one token fed after the pending token (prompt lookup's next token, or the pending
  token again) because a 2-token forward costs no more than a 1-token one on the hardware; a plain step still
  (``proposed`` 0), counted as ``guessed`` and ``guess_accepted``.
- *shadow*: a drafter asked for its first token at the round's position without it being verified
  (``Decision.shadow``); ``shadow_hit`` is 1 when the target emitted that token first. Not counted as proposed.
- Every round *emits* ``accepted + extension_accepted + sibling_accepted + guess_accepted + 1`` tokens (bonus or
  recovered), fewer only when a stop rule cuts the round.
- Token-level acceptance rate ``alpha = accepted / proposed`` over many rounds; *mean accepted per round* excludes
  the bonus/recovered token (vLLM's "mean acceptance length" is this plus one).

This module imports nothing heavy (no torch), so ``adaptive_spec.stats`` can consume records in any process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NO_DRAFTER = "none"


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """What happened in one speculative round (or one plain step, when ``k == 0``)."""

    drafter: str  # name of the drafter that proposed; NO_DRAFTER for a plain target step
    k: int  # draft budget the round ran with (the decision, capped by the tokens left to generate)
    proposed: int  # tokens proposed, <= k
    accepted: int  # leading proposed tokens the target accepted, <= proposed
    emitted: int  # tokens appended (accepted + extension_accepted + sibling_accepted + guess_accepted + 1, unless a
    # stop cut it)
    context_len: int  # tokens in the context (prompt + generated) before the round
    draft_s: float  # seconds spent drafting, catch-up included
    verify_s: float  # seconds in the target's forward over the pending token + proposals
    draft_probs: tuple[float, ...] = field(default=())  # drafter's probability of each proposed token; () if none
    catchup: int = 0  # tokens the model drafter had to feed to catch up with the context before drafting
    k_asked: int | None = None  # the k the decision asked for, when the round ran with less (end of budget)
    extension: int = 0  # tokens prompt lookup appended after the proposals (verified with them)
    extension_accepted: int = 0  # of those, accepted (only after every proposal was)
    siblings: int = 0  # second choices verified beside the proposals (greedy, model-type drafters)
    sibling_accepted: int = 0  # 1 when the first rejected proposal's sibling was accepted in its place
    guessed: int = 0  # 1 when a plain step fed a guess after the pending token (a padded plain step)
    guess_accepted: int = 0  # 1 when the target agreed with the guess
    shadow: str = ""  # the drafter asked for an unverified first token at this position ("" : none)
    shadow_hit: int = 0  # 1 when the target's first emitted token was that drafter's

    @property
    def verified(self) -> int:
        """Tokens in the round's verify forward: the pending token, the proposals, the extension, the siblings, the
        guess."""
        return 1 + self.proposed + self.extension + self.siblings + self.guessed

    @property
    def speculative(self) -> bool:
        return self.proposed > 0

    @property
    def rejected(self) -> int:
        return self.proposed - self.accepted
