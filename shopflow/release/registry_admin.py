"""`shopflow registry <what>`: read the registry, or create, upgrade or re-key it.

- `show`: the champion's entry; `history`: the log, the champion starred;
- `init`: a new shop's empty sealed registry (production needs one before the first night);
- `upgrade`: seal a format-1 registry, after checking its old hash chain;
- `rekey`: check it under `SHOPFLOW_REGISTRY_KEY`, seal it under `SHOPFLOW_REGISTRY_KEY_NEW`.
"""

from __future__ import annotations

import dataclasses
import json

from shopflow.core.config import Params
from shopflow.core.secrets import mode_for, require_key
from shopflow.release.registry import KEY_ENV, Registry


def administer(params: Params, what: str) -> str:
    """Do `what` to the registry `params` name; what to print."""
    registry = Registry.of(params)
    where = registry.path
    if what == "init":
        registry.init()
        return f"{where}: created, empty and sealed; the first promote registers the baseline"
    if what == "rekey":
        new = require_key(f"{KEY_ENV}_NEW", mode_for(params.ingest.source), "", "the new seal")
        return f"{where}: {registry.rekey(new)} entries checked and sealed under the new key"
    if what == "upgrade":
        return f"{where}: {registry.upgrade()} entries checked and sealed under {KEY_ENV}"
    champion = registry.champion()
    if what == "history":
        entries = registry.history()
        if not entries:
            return f"{where}: empty (the first promote stage registers the baseline)"
        return "\n".join(
            f"{'*' if champion and e.id == champion.id else ' '} {e.summary()}" for e in entries
        )
    if champion is None:
        return f"{where}: empty; the champion is the baselines (BM25F, best recommender)"
    return json.dumps(dataclasses.asdict(champion), indent=2)
