"""Secrets: where keys come from, how strong they must be, and when a development key is allowed.

Three secrets protect a shop's data and models:
- `SHOPFLOW_PSEUDONYM_KEY` keys the HMAC that turns customer and session ids into pseudonyms;
- `SHOPFLOW_REGISTRY_KEY` keys the MAC that seals the model registry (pointer and log);
- `SHOPFLOW_API_KEY` is what a caller must present to read per-customer answers.

Each is read from the environment variable, or from the file named by `<VAR>_FILE` (how Docker
and Kubernetes mount secrets, and how a secret store's agent hands them over).

The mode decides what happens when one is missing. **Production is the default**: a missing,
short or public development key is an error naming the variable. **Demo** applies only to the
embedded synthetic shop (`ingest.source: synthetic`), whose ids are invented: there a missing
key falls back to a development value, with a warning. `SHOPFLOW_MODE=production` forces
production on the synthetic shop too (to rehearse a deployment); nothing turns real data into
a demo.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from enum import StrEnum
from pathlib import Path

from shopflow.core.errors import ConfigError

log = logging.getLogger(__name__)

MODE_ENV = "SHOPFLOW_MODE"
DEMO_SOURCE = "synthetic"
MIN_KEY_CHARS = 32
DEV_PREFIX = "shopflow-development-"


class Mode(StrEnum):
    PRODUCTION = "production"
    DEMO = "demo"


def mode_for(source: str) -> Mode:
    """Demo only for the embedded synthetic shop, and only unless production is forced."""
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced and forced not in (Mode.PRODUCTION, Mode.DEMO):
        raise ConfigError(f"{MODE_ENV}={forced!r}: use 'production' (or leave it unset)")
    if source != DEMO_SOURCE:
        if forced == Mode.DEMO:
            raise ConfigError(
                f"{MODE_ENV}=demo is only for the embedded synthetic shop; ingest.source is "
                f"{source!r}, whose ids are real: set the keys (docs/security.md)"
            )
        return Mode.PRODUCTION
    return Mode.PRODUCTION if forced == Mode.PRODUCTION else Mode.DEMO


def new_key() -> str:
    """A fresh random key (64 hex characters), for `shopflow keys new` and tests."""
    return secrets.token_hex(32)


def read_secret(var: str) -> str | None:
    """The secret from `var`, else from the file `<var>_FILE` names; None when neither is set."""
    value = os.environ.get(var, "").strip()
    if value:
        return value
    file = os.environ.get(f"{var}_FILE", "").strip()
    if not file:
        return None
    try:
        return Path(file).read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise ConfigError(f"{var}_FILE={file}: cannot read the key ({exc.strerror})") from None


def require_key(var: str, mode: Mode, dev_value: str, purpose: str) -> bytes:
    """The key in `var`: in production it must be set, at least `MIN_KEY_CHARS` long, and not
    a development value; in demo a missing key is `dev_value`, with a warning."""
    value = read_secret(var)
    how = (
        f"set {var} (or {var}_FILE, a file holding it) from your secret store, e.g. "
        f"`export {var}=$(python -m shopflow keys new)`; see docs/security.md"
    )
    if value is None:
        if mode == Mode.DEMO:
            log.warning(
                "%s is not set: the synthetic demo uses a public development key for %s "
                "(refused with real data)",
                var,
                purpose,
            )
            return dev_value.encode()
        raise ConfigError(f"{var} is not set: production needs a secret key for {purpose}; {how}")
    if mode == Mode.PRODUCTION:
        if value.startswith(DEV_PREFIX):
            raise ConfigError(
                f"{var} holds the public development key: it is refused outside the synthetic "
                f"demo, since anyone can recompute it; {how}"
            )
        if len(value) < MIN_KEY_CHARS:
            raise ConfigError(
                f"{var} is {len(value)} characters: a key for {purpose} needs at least "
                f"{MIN_KEY_CHARS} (random, e.g. 64 hex characters); {how}"
            )
    return value.encode()


def same_secret(given: str | bytes, expected: bytes) -> bool:
    """Constant-time comparison, so response times do not leak how much of a key matched."""
    if isinstance(given, str):
        given = given.encode()
    return hmac.compare_digest(given, expected)
