"""The model registry: which model is the champion, and the log of how it got there.

One JSON file, `registry.json`, holds the champion pointer and an append-only log of
entries (register, promote, rollback): when, what (model version, BentoML model and Bento
tags), why (the gate's decision), metrics, data and params hashes, git revision.

Why one file: the champion and the log must never disagree. Every change rewrites the file
whole into a temporary file, fsyncs it and renames it over the old one, which POSIX makes
atomic: a process killed at any instant leaves either the old registry or the new one,
never half of each. Changes are serialised by an exclusive `flock` on `registry.lock`, so
two nights (or a night and a rollback) cannot interleave.

Why a keyed seal: whoever can write the file must not be able to choose what is served. The
whole file (champion pointer, every entry, their count) is sealed with HMAC-SHA256 under
`SHOPFLOW_REGISTRY_KEY`, which lives outside the registry (environment or a mounted secret).
A moved pointer, an edited, removed, reordered or added entry, or a file resealed without the
key fails the check on read, which names what is wrong; so does every malformed file. Each
entry also carries the SHA-256 of the one before it, so the log reads as a chain. A missing
registry is an error in production (a new shop creates it with `shopflow registry init`):
otherwise deleting the file would silently make the baselines the champion again. What a
seal cannot show is a whole older file put back; docs/security.md says how to guard that.

The first champion is the baselines (BM25F, best recommender) (`kind: baseline`): it is rebuilt from
each night's data, so it has no BentoML model or Bento, and the first trained model must
beat it like any other challenger.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from shopflow.core.errors import ShopflowError, StageInputError
from shopflow.core.secrets import Mode, mode_for, require_key
from shopflow.serving.model_store import model_folder

if TYPE_CHECKING:
    from shopflow.core.config import Params

FILE = "registry.json"
LOCK = "registry.lock"
FORMAT = 2
MAX_BYTES = 64 * 1024 * 1024
BASELINE_VERSION = "baseline-bm25-popularity"
KEY_ENV = "SHOPFLOW_REGISTRY_KEY"
DEV_KEY = "shopflow-development-registry-key-do-not-use-in-production"

Action = Literal["register", "promote", "force", "rollback"]  # force: a person overrode the gate
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


def champion_bundle(entry: Entry | None) -> Path | None:
    """The champion's model folder in the BentoML store (None for the baseline, which is
    rebuilt from each night's data)."""
    if entry is None or entry.kind == "baseline":
        return None
    try:
        return model_folder(str(entry.model_tag))
    except StageInputError as exc:
        raise StageInputError(
            f"the champion #{entry.id}: {exc}: restore the store, or `shopflow rollback --to` "
            "a model that is there"
        ) from None


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


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


class Registry:
    """The registry at `folder`, sealed with `key`. `missing_ok`: a missing file reads as an
    empty registry (the demo's first run); otherwise it is an error."""

    def __init__(self, folder: str | Path, key: bytes, *, missing_ok: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / FILE
        self.key = key
        self.missing_ok = missing_ok

    @classmethod
    def of(cls, params: Params, project: Path | None = None) -> Registry:
        """The registry `params` name (relative to `project` when given), with the key and
        strictness of their mode."""
        mode = mode_for(params.ingest.source)
        folder = Path(params.promote.registry)
        return cls(
            project / folder if project else folder,
            registry_key(mode),
            missing_ok=mode == Mode.DEMO,
        )

    # -- reading -------------------------------------------------------------------------

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
                raise self._damaged(
                    "sealed with the public development key (a demo registry): production "
                    "starts its own with `shopflow registry init`"
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

    def history(self) -> list[Entry]:
        return self._read()[1]

    def champion(self) -> Entry | None:
        champion, entries = self._read()
        return entries[champion - 1] if champion else None

    def current(self) -> Entry:
        """The champion, which every registry with an entry has."""
        champion = self.champion()
        if champion is None:
            raise RegistryError(f"{self.path}: no champion yet (nothing was registered)")
        return champion

    def entry(self, ref: str | int) -> Entry:
        """An entry by id (`3`, `#3`) or by model version (the newest with it)."""
        entries = self.history()
        text = str(ref).lstrip("#")
        if text.isdigit() and 1 <= int(text) <= len(entries):
            return entries[int(text) - 1]
        for entry in reversed(entries):
            if entry.version == text or entry.model_tag == text or entry.bento_tag == text:
                return entry
        known = ", ".join(f"#{e.id} {e.version}" for e in entries) or "none"
        raise RegistryError(f"no registry entry {ref!r} (entries: {known})")

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[Registry]:
        """Exclusive access for a read-check-write sequence (blocks other writers)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / LOCK).open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, entry: Entry, make_champion: bool) -> Entry:
        """Append `entry` (its id and hashes are assigned here); call inside `locked()`."""
        champion, entries = self._read()
        sealed = Entry(**{**asdict(entry), "id": len(entries) + 1, "previous": champion}).sealed(
            entries[-1].hash if entries else ""
        )
        entries.append(sealed)
        self._write(sealed.id if make_champion else champion, entries)
        return sealed

    def replace_champion(self, expected: Entry, entry: Entry) -> Entry:
        """Make `entry` the champion if the champion is still `expected` (compare and swap).

        A promotion decides against one champion and commits minutes later (Bento build,
        smoke test). Two nights racing to promote both pass their gates; the check under the
        lock lets exactly one move the champion, and the other fails naming the winner.
        """
        with self.locked():
            current = self.current()
            if current.id != expected.id:
                raise RegistryError(
                    f"the champion moved to #{current.id} ({current.version}) while this "
                    f"promotion ran against #{expected.id}; re-run evaluate against it"
                )
            return self.append(entry, make_champion=True)

    def init(self) -> None:
        """Create an empty sealed registry (a new shop, once); an existing one is kept."""
        with self.locked():
            if self.path.exists() or self.path.is_symlink():
                raise RegistryError(f"{self.path}: a registry is already here; it was kept")
            self._write(None, [])

    def rekey(self, new_key: bytes) -> int:
        """Check the registry under this key, then seal it under `new_key` (key rotation);
        its entry count. Afterwards only `new_key` reads it."""
        if not new_key:
            raise RegistryError(f"the new key is empty: set {KEY_ENV}_NEW")
        with self.locked():
            champion, entries = self._read()
            self.key = new_key
            self._write(champion, entries)
            return len(entries)

    def upgrade(self) -> int:
        """Seal a format-1 registry under this key, after checking its old unkeyed chain (a
        person has read it: the old format could be rewritten by anyone); its entry count."""
        with self.locked():
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
            self._write(champion, resealed)
            return len(resealed)

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

    def ensure_baseline(self, metrics: dict, data_hash: str | None = None) -> Entry:
        """The baselines (BM25F, best recommender) as the first champion, when the registry
        is empty."""
        with self.locked():
            champion, entries = self._read()
            if entries:
                return entries[champion - 1] if champion else entries[-1]
            return self.append(
                Entry(
                    id=0,
                    action="register",
                    at=now(),
                    kind="baseline",
                    version=BASELINE_VERSION,
                    reason="first run: the baselines (BM25F, best recommender) are the first "
                    "champion",
                    metrics=metrics,
                    data_hash=data_hash,
                ),
                make_champion=True,
            )

    def rollback_target(self, to: str | int | None = None) -> Entry:
        """The entry a rollback would re-point to (default: the model before the champion)."""
        current = self.champion()
        if current is None:
            raise RegistryError("the registry is empty: there is nothing to roll back")
        target = self._previous_model(current) if to is None else self.entry(to)
        if target.kind != "model":
            raise RegistryError(
                f"entry #{target.id} is the baselines (BM25F, best recommender): it has no Bento "
                "to serve (it is the reference the first model had to beat)"
            )
        if target.version == current.version:
            raise RegistryError(f"{target.version} is already the champion (#{current.id})")
        return target

    def rollback(
        self, to: str | int | None = None, reason: str = "", bento_tag: str | None = None
    ) -> Entry:
        """Re-point the champion to an earlier model entry and log it. `bento_tag` replaces
        the entry's Bento when that had to be rebuilt (the caller checks it exists)."""
        with self.locked():
            target = self.rollback_target(to)
            current = self.current()
            return self.append(
                Entry(
                    id=0,
                    action="rollback",
                    at=now(),
                    kind="model",
                    version=target.version,
                    model_tag=target.model_tag,
                    bento_tag=bento_tag or target.bento_tag,
                    reason=reason
                    or f"rollback from #{current.id} ({current.version}) to #{target.id}",
                    metrics=target.metrics,
                    data_hash=target.data_hash,
                    params_hash=target.params_hash,
                    git_revision=target.git_revision,
                    decision={"rolled_back_to": target.id, "from": current.id},
                ),
                make_champion=True,
            )

    def _previous_model(self, current: Entry) -> Entry:
        """The model that was first promoted just before the current champion's model:
        repeated rollbacks walk back in time (C → B → A), never ping-pong."""
        entries = self.history()
        order: list[str] = []
        for entry in entries:
            if entry.kind == "model" and entry.version not in order:
                order.append(entry.version)
        at = order.index(current.version) if current.version in order else 0
        if at == 0:
            raise RegistryError(
                f"the champion #{current.id} ({current.version}) is the first model ever "
                "promoted: there is no earlier model to roll back to"
            )
        return next(e for e in reversed(entries) if e.version == order[at - 1])
