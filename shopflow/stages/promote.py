"""Stage `promote`: on a promote verdict, save, build and smoke-test the challenger's Bento,
then move the champion (`shopflow.release.promotion`).

Reads `reports/decision.json` (and the stage outputs the model is saved from); writes the
registry (`promote.registry`), BentoML's store and `metrics/promote.json`. A failed smoke
test leaves the champion as it was and fails the stage with exit code 4.
"""

from __future__ import annotations

from shopflow.core import paths
from shopflow.core.config import Params
from shopflow.evaluation.gate import read_decision
from shopflow.release.promotion import promote


def run(params: Params) -> dict:
    return promote(params, read_decision(paths.DECISION))
