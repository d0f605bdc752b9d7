"""The registry's file: its entries, its format and its keyed seal (read, checked, written).

`Registry` (`shopflow.release.registry`) decides what changes; this module decides what a
valid file is. Reading parses strictly (every field present and of its type, actions and
kinds from their lists), checks the HMAC-SHA256 seal over the whole content under
`SHOPFLOW_REGISTRY_KEY` and the entries' hash chain, and turns every failure into a
`RegistryError` that names it: never a traceback, never a silently empty registry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from shopflow.core.errors import ShopflowError
from shopflow.core.secrets import Mode, require_key

FILE = "registry.json"
FORMAT = 2
MAX_BYTES = 64 * 1024 * 1024
KEY_ENV = "SHOPFLOW_REGISTRY_KEY"
DEV_KEY = "shopflow-development-registry-key-do-not-use-in-production"

# force: a person overrode the gate; experiment: a challenger went to an online experiment (or
# moved on to its next mode); stop: the experiment ended and the champion stayed
Action = Literal["register", "promote", "force", "rollback", "experiment", "stop"]
Kind = Literal["baseline", "model"]
ACTIONS = get_args(Action)
KINDS = get_args(Kind)


class RegistryError(ShopflowError):
    """The registry cannot do what was asked (or its file is damaged); nothing was changed."""

    exit_code = 2


@dataclass(frozen=True)
class Entry:
    """One line of the promotion log; the champion is always one of these."""

    id: int
    action: Action
    at: str
    kind: Kind
    version: str
    model_tag: str | None = None
    bento_tag: str | None = None
    reason: str = ""
    metrics: dict = field(default_factory=dict)
    data_hash: str | None = None
    params_hash: str | None = None
    git_revision: str | None = None
    previous: int | None = None  # the champion this entry replaced
    decision: dict = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""

    def sealed(self, prev_hash: str) -> Entry:
        """This entry chained to the one before it."""
        body = {**asdict(self), "prev_hash": prev_hash, "hash": ""}
        return Entry(**{**body, "hash": hashlib.sha256(canonical(body)).hexdigest()})

    def summary(self) -> str:
        what = (
            self.bento_tag or self.model_tag or "BM25F + best recommend baseline (rebuilt nightly)"
        )
        return f"#{self.id} {self.action:<9} {self.at}  {self.version}  {what}  {self.reason}"


def canonical(value: object) -> bytes:
    """The bytes a seal covers: key order and spacing fixed, so a re-indented file still
    verifies and any change of content does not."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def registry_key(mode: Mode) -> bytes:
    """The registry's MAC key: a secret in production, a public value only in the demo."""
    return require_key(KEY_ENV, mode, DEV_KEY, "the model registry's seal")


# Each field of an entry and the types its value may have (JSON has no other).
ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "id": (int,),
    "action": (str,),
    "at": (str,),
    "kind": (str,),
    "version": (str,),
    "model_tag": (str, type(None)),
    "bento_tag": (str, type(None)),
    "reason": (str,),
    "metrics": (dict,),
    "data_hash": (str, type(None)),
    "params_hash": (str, type(None)),
    "git_revision": (str, type(None)),
    "previous": (int, type(None)),
    "decision": (dict,),
    "prev_hash": (str,),
    "hash": (str,),
}
assert set(ENTRY_TYPES) == {f.name for f in fields(Entry)}


def _typed(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def parse_entry(raw: object, position: int) -> Entry:
    """An entry from its JSON object, every field present and of its type, or why not."""
    if not isinstance(raw, dict):
        raise ValueError(f"entry {position} is a {type(raw).__name__}, not an object")
    missing = sorted(set(ENTRY_TYPES) - set(raw))
    extra = sorted(set(raw) - set(ENTRY_TYPES))
    if missing or extra:
        raise ValueError(f"entry {position}: missing fields {missing}, unknown fields {extra}")
    for name, types in ENTRY_TYPES.items():
        if not _typed(raw[name], types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"entry {position}: {name} is {raw[name]!r:.60}, not {wanted}")
    if raw["action"] not in ACTIONS:
        raise ValueError(f"entry {position}: action {raw['action']!r:.60} is not one of {ACTIONS}")
    if raw["kind"] not in KINDS:
        raise ValueError(f"entry {position}: kind {raw['kind']!r:.60} is not one of {KINDS}")
    return Entry(**raw)


class SealedFile:
    """The registry file at `path` under `key`; `missing_ok`: a missing file reads as empty."""

    folder: Path
    path: Path
    key: bytes
    missing_ok: bool

    def _seal(self, body: dict) -> str:
        return hmac.new(self.key, canonical(body), hashlib.sha256).hexdigest()

    def _damaged(self, why: str) -> RegistryError:
        return RegistryError(
            f"{self.path}: {why}; nothing was served from it or changed. Restore the file from "
            "a backup (docs/security.md, 'Registry integrity')"
        )

    def _load(self) -> dict:
        """The file's JSON object, or a RegistryError naming why it cannot be one."""
        if not self.path.exists() and not self.path.is_symlink():
            if self.missing_ok:
                return {"format": FORMAT, "champion": None, "entries": []}
            raise RegistryError(
                f"{self.path}: no registry here. A new shop creates it once with `shopflow "
                "registry init`; if one was here, it was deleted: restore it from a backup "
                "(serving and promotion stop until then, so no ungated model is served)"
            )
        try:
            if self.path.stat().st_size > MAX_BYTES:
                raise self._damaged(f"{self.path.stat().st_size:,} bytes is not a registry")
            text = self.path.read_text(encoding="utf-8")
            raw = json.loads(text)
        except (OSError, UnicodeDecodeError) as exc:
            raise self._damaged(f"cannot be read ({type(exc).__name__}: {exc})") from None
        except RecursionError:
            raise self._damaged("nested too deeply to be a registry") from None
        except ValueError as exc:
            raise self._damaged(f"not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise self._damaged(f"a JSON {type(raw).__name__}, not a registry object")
        if raw.get("format") == 1:
            raise RegistryError(
                f"{self.path}: an unsealed registry (format 1, before keyed seals): read it "
                "(plain JSON) to check its champion and log, then seal it under your key with "
                "`shopflow registry upgrade`"
            )
        if set(raw) != {"format", "champion", "entries", "seal"}:
            raise self._damaged(f"fields {sorted(raw)} are not a sealed shopflow registry's")
        if raw["format"] != FORMAT:
            raise self._damaged(f"format {raw['format']!r:.40} is not {FORMAT}")
        seal = raw.pop("seal")
        if not isinstance(seal, str) or not hmac.compare_digest(seal, self._seal(raw)):
            dev = hmac.new(DEV_KEY.encode(), canonical(raw), hashlib.sha256).hexdigest()
            if isinstance(seal, str) and hmac.compare_digest(seal, dev):
                raise RegistryError(
                    f"{self.path}: a demo registry, sealed with the public development key; "
                    "production keeps its own elsewhere (promote.registry) and creates it "
                    "with `shopflow registry init`"
                )
            raise self._damaged(
                f"its seal does not match its content under {KEY_ENV}: it was changed without "
                "the key (a champion pointer moved, an entry edited, added, removed or "
                "reordered) or sealed with another key"
            )
        return raw

    def _read(self) -> tuple[int | None, list[Entry]]:
        raw = self._load()
        try:
            if not isinstance(raw["entries"], list):
                raise ValueError(f"entries is a {type(raw['entries']).__name__}, not a list")
            entries = [parse_entry(e, i) for i, e in enumerate(raw["entries"], start=1)]
            champion = raw["champion"]
            if champion is not None and not _typed(champion, (int,)):
                raise ValueError(f"champion is {champion!r:.40}, not an entry id or null")
        except ValueError as exc:
            raise self._damaged(str(exc)) from None
        prev = ""
        for i, entry in enumerate(entries, start=1):
            if entry.id != i or entry.sealed(prev).hash != entry.hash:
                raise self._damaged(f"entry #{i} does not chain to the entry before it")
            prev = entry.hash
        if champion is not None and not 1 <= champion <= len(entries):
            raise self._damaged(f"the champion #{champion} is not in the log")
        return champion, entries

    def _format_1(self) -> tuple[int | None, list[Entry]]:
        """A format-1 file's champion and entries, re-sealed, once its unkeyed chain checks."""
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict) or raw.get("format") != 1:
                raise ValueError("not a format-1 registry")
            entries = [parse_entry(e, i) for i, e in enumerate(raw["entries"], start=1)]
            champion = raw["champion"]
            if champion is not None and not _typed(champion, (int,)):
                raise ValueError(f"champion is {champion!r:.40}")
        except (OSError, ValueError, KeyError, RecursionError) as exc:
            raise RegistryError(f"{self.path}: cannot upgrade ({exc})") from None
        resealed: list[Entry] = []
        for i, entry in enumerate(entries, start=1):
            body = {**asdict(entry), "hash": ""}
            old = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
            before = entries[i - 2].hash if i > 1 else ""
            if entry.id != i or old != entry.hash or entry.prev_hash != before:
                raise RegistryError(
                    f"{self.path}: entry #{i} does not chain to the one before; not sealed"
                )
            resealed.append(entry.sealed(resealed[-1].hash if resealed else ""))
        if champion is not None and not 1 <= champion <= len(resealed):
            raise RegistryError(f"{self.path}: the champion #{champion} is not in the log")
        return champion, resealed

    def _write(self, champion: int | None, entries: list[Entry]) -> None:
        content = {"format": FORMAT, "champion": champion, "entries": [asdict(e) for e in entries]}
        body = json.dumps({**content, "seal": self._seal(content)}, indent=2)
        fd, tmp = tempfile.mkstemp(prefix=".registry-", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            Path(tmp).replace(self.path)  # the commit point
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)
