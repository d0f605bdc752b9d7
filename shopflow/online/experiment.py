"""A running experiment and who is in which arm of it.

An experiment is a small JSON file (`shopflow online start` writes it; the service reads it
from `$SHOPFLOW_EXPERIMENT` at start-up): its id, a salt, the mode, the champion and the
challenger, the share of traffic in it. Assignment is sticky and needs no state: the unit (the
customer's `user_key`, else the client's `session_id`) is hashed with the salt into one of
10,000 buckets; buckets below `share` × 10,000 are in the experiment. A new salt reshuffles
everyone, so a follow-up experiment does not inherit the last one's carry-over.

Modes:
- `shadow`: the challenger ranks every request in the experiment; its list is logged, only the
  champion's is shown (a safety check of the challenger under real traffic: latency, errors,
  zero results).
- `interleave`: team-draft interleaving of the two lists (search and recommend); each shown
  item is credited to the team that placed it.
- `ab`: half of the experiment's buckets see the challenger, half the champion.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from shopflow.core.errors import ConfigError

BUCKETS = 10_000
EXPERIMENT_ENV = "SHOPFLOW_EXPERIMENT"
CHAMPION, CHALLENGER = "champion", "challenger"
Mode = Literal["shadow", "interleave", "ab"]
ModelTag = Annotated[str, StringConstraints(pattern=r"^[\w.-]+:[\w.-]+$", max_length=200)]


class ExperimentSpec(BaseModel):
    """One experiment, as written to its JSON file."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][\w.-]{0,63}$")]
    salt: Annotated[str, StringConstraints(min_length=8, max_length=128)]
    mode: Mode
    champion: ModelTag
    challenger: ModelTag
    share: float = Field(gt=0, le=1, description="share of units in the experiment")
    started_at: str


@dataclass(frozen=True)
class Assignment:
    """Where one unit stands in the experiment (None: no experiment runs)."""

    experiment: str | None
    bucket: int
    arm: str  # champion | challenger (A/B), interleaved, shadowed, or champion outside it

    @property
    def in_experiment(self) -> bool:
        return self.experiment is not None and self.arm != "outside"


def bucket_of(salt: str, unit: str) -> int:
    """The unit's bucket in 0..9,999: SHA-256 of salt and unit, so no process state and no
    dependence on Python's hash randomisation."""
    digest = hashlib.sha256(f"{salt}\x1f{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def assign(spec: ExperimentSpec | None, unit: str | None) -> Assignment:
    """The unit's arm. A request without a unit (no user_key, no session_id) stays outside:
    its clicks could not be tied to a customer, so it would only add noise."""
    if spec is None:
        return Assignment(None, -1, "outside")
    if unit is None:
        return Assignment(spec.id, -1, "outside")
    bucket = bucket_of(spec.salt, unit)
    cutoff = round(spec.share * BUCKETS)
    if bucket >= cutoff:
        return Assignment(spec.id, bucket, "outside")
    if spec.mode == "shadow":
        return Assignment(spec.id, bucket, "shadowed")
    if spec.mode == "interleave":
        return Assignment(spec.id, bucket, "interleaved")
    # A/B: the lower half of the experiment's buckets keeps the champion
    return Assignment(spec.id, bucket, CHALLENGER if bucket >= cutoff / 2 else CHAMPION)


def read_experiment(path: str | Path) -> ExperimentSpec:
    """The experiment in the file `path` (or, for containers without the file, the JSON text
    itself), or an error naming the file and the field that is wrong."""
    if isinstance(path, str) and path.lstrip().startswith("{"):
        try:
            raw = json.loads(path)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{EXPERIMENT_ENV} holds JSON that does not parse: {exc}") from None
        return _validated(raw, f"{EXPERIMENT_ENV}")
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{EXPERIMENT_ENV}: no experiment file at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{EXPERIMENT_ENV}: {path} is not a JSON experiment: {exc}") from None
    return _validated(raw, f"experiment file {path}")


def _validated(raw: object, origin: str) -> ExperimentSpec:
    try:
        spec = ExperimentSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{origin}: {problems}") from None
    if spec.champion == spec.challenger:
        raise ConfigError(f"{origin}: champion and challenger are both {spec.champion}")
    return spec


def new_salt(experiment_id: str, started_at: str) -> str:
    """A salt that differs per experiment (ids are unique in the registry's log)."""
    return hashlib.sha256(f"{experiment_id}|{started_at}".encode()).hexdigest()[:16]


def experiment_id_for(challenger: str, started_at: str) -> str:
    """`exp-<challenger version>-<YYYYMMDDHHMM>`."""
    version = challenger.split(":", 1)[1]
    stamp = re.sub(r"\D", "", started_at)[:12]
    return f"exp-{version}-{stamp}"[:64]
