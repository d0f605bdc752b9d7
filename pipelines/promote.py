"""Stage `promote`: on a promote verdict, save, build and smoke-test the challenger's Bento,
then move the champion (`shopflow.release.promotion`).

Reads `reports/decision.json` (and the stage outputs the model is saved from); writes the
registry (`promote.registry`), BentoML's store and `metrics/promote.json`. A failed smoke
test leaves the champion as it was and fails the stage with exit code 4. `--force --reason`
promotes whatever the verdict, still smoke-tested, and logs who and why.
"""

from __future__ import annotations

from shopflow.core import paths
from shopflow.core.config import Params
from shopflow.evaluation.gate import read_decision
from shopflow.release.promotion import Override, promote


def run(
    params: Params, force: bool = False, reason: str | None = None, by: str | None = None
) -> dict:
    override = Override(by=by or "", reason=reason or "") if force else None
    return promote(params, read_decision(paths.DECISION), override)
