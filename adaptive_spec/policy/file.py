"""Policy files (``policies/*.json``): everything a controller needs, validated before use.

A policy file holds the calibrated cost model (with the machine and pair it was measured on), the controller's
settings (per class), the estimator's settings and, optionally, the prompt classifier's parameters. Plain JSON,
validated by pydantic: a missing field, a NaN, a file for another model pair or another schema version is a clear
error naming the file, never a silently different behaviour. Nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .controller import ControllerConfig
from .cost import CostModel

SCHEMA = "adaptive-spec/policy"
VERSION = 1
POLICIES_DIR = Path(__file__).resolve().parents[2] / "policies"


class PolicyFileError(ValueError):
    """A policy file cannot be used: the message names the file and the problem."""


class EstimatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    half_life_tokens: float | None = Field(20_000.0, gt=0)
    prior_mean: float = Field(0.5, gt=0, lt=1)
    prior_strength: float = Field(2.0, gt=0)


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["adaptive-spec/policy"] = Field(SCHEMA, alias="schema")
    version: Literal[1] = VERSION
    name: str
    pair_id: str
    description: str = ""
    cost: CostModel
    controller: ControllerConfig = ControllerConfig()
    estimator: EstimatorSettings = EstimatorSettings()
    classifier: dict[str, Any] | None = None  # PromptClassifier.to_json() payload
    trained_on: dict[str, Any] = Field(default_factory=dict)  # what the policy was fitted on, for people

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, mode="json"), indent=1) + "\n"


def load_policy_file(path: str | Path, pair_id: str | None = None) -> PolicyFile:
    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(f"policy file not found: {path}")
    try:
        raw = json.loads(path.read_text(), parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError) as error:
        raise PolicyFileError(f"{path}: not valid JSON ({error})") from None
    if isinstance(raw, dict) and raw.get("schema") == SCHEMA and raw.get("version") not in (None, VERSION):
        raise PolicyFileError(f"{path}: policy schema version {raw.get('version')}, this library reads {VERSION}")
    try:
        policy = PolicyFile.model_validate(raw)
    except ValidationError as error:
        e = error.errors()[0]
        where = ".".join(str(p) for p in e["loc"])
        raise PolicyFileError(f"{path}: {where}: {e['msg']}") from None
    if pair_id is not None and policy.pair_id != pair_id:
        raise PolicyFileError(f"{path}: policy is for model pair {policy.pair_id!r}, not {pair_id!r}")
    if policy.cost.pair_id != policy.pair_id:
        raise PolicyFileError(f"{path}: cost model measured for {policy.cost.pair_id!r}, policy for {policy.pair_id!r}")
    return policy


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in a policy file")


def default_policy_path(pair_id: str, device: str = "cpu") -> Path:
    return POLICIES_DIR / f"{pair_id}-{device}.json"


def calibrated_policy(path: Path, pair_id: str, cost: CostModel, seed: PolicyFile | None = None) -> PolicyFile:
    """The policy ``calibrate`` writes to ``path``: the file already there with ``cost`` swapped in; else the
    ``seed`` policy's controller, estimator and classifier (any pair: a quantized draft starts from the bf16
    draft's tuned policy, its acceptance re-learned online and by ``train-policy --refit``); else defaults."""
    if path.is_file():
        return load_policy_file(path, pair_id).model_copy(update={"cost": cost})
    if seed is None:
        return PolicyFile(name=path.stem, pair_id=pair_id, cost=cost,
                          description="calibrated cost model, default controller settings")  # fmt: skip
    return seed.model_copy(update={
        "name": path.stem, "pair_id": pair_id, "cost": cost,
        "description": f"cost model calibrated for {pair_id}; controller, estimator and classifier from {seed.name}"
                       f" ({seed.pair_id})",
        "trained_on": {**seed.trained_on, "seeded_from": {"policy": seed.name, "pair_id": seed.pair_id}},
    })  # fmt: skip
