"""Rollback: re-point the champion to an earlier model, rebuilding nothing that exists.

Repeated rollbacks walk back in time (C → B → A, see `Registry.rollback_target`); the Bento
is rebuilt from its model only if it was deleted from the store. The workspace's champion
pointer (`release.pointer`) is rewritten, so `dvc status` shows `drift` and `evaluate` changed
and the next `dvc repro` re-decides against the new champion.
"""

from __future__ import annotations

import logging

from shopflow.core.config import Params
from shopflow.release.deploy import ensure_bento
from shopflow.release.pointer import write_champion_pointer
from shopflow.release.registry import Entry, Registry

log = logging.getLogger(__name__)


def rollback(params: Params, to: str | int | None = None) -> Entry:
    """Re-point the champion to `to` (an entry id or model version; default: the model
    before the champion) and log it."""
    registry = Registry.of(params)
    target = registry.rollback_target(to)
    bento = ensure_bento(target)
    entry = registry.rollback(target.id, bento_tag=bento)
    write_champion_pointer(registry)
    log.info("rolled back: champion #%d is %s (Bento %s)", entry.id, entry.version, bento)
    return entry
