"""The registry: atomic, serialised, append-only, tamper-evident; rollback walks back in time."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shopflow.release.registry import (
    BASELINE_VERSION,
    DEV_KEY,
    Entry,
    Registry,
    RegistryError,
    now,
)
from tests.conftest import ROOT

KEY = b"unit-test-registry-key-0123456789abcdef"


def reg(folder: str | Path) -> Registry:
    """A registry sealed with the test key; a missing file reads as empty (the demo's rule)."""
    return Registry(folder, KEY, missing_ok=True)


pytestmark = pytest.mark.unit


def promote(registry: Registry, version: str) -> Entry:
    with registry.locked():
        return registry.append(
            Entry(
                id=0,
                action="promote",
                at=now(),
                kind="model",
                version=version,
                model_tag=f"shopflow:{version}",
                bento_tag=f"shopflow:bento-{version}",
                reason="test",
            ),
            make_champion=True,
        )


def test_an_empty_registry_has_no_champion_and_the_baseline_is_registered_once(tmp_path):
    registry = reg(tmp_path / "reg")
    assert registry.champion() is None and registry.history() == []
    first = registry.ensure_baseline({"search": {"ndcg@10": 0.68}})
    again = registry.ensure_baseline({"search": {"ndcg@10": 0.99}})
    assert first == again and first.version == BASELINE_VERSION and first.id == 1
    assert registry.champion() == first and len(registry.history()) == 1


def test_promotions_chain_and_record_what_they_replaced(tmp_path):
    registry = reg(tmp_path)
    registry.ensure_baseline({})
    a = promote(registry, "aaa")
    b = promote(registry, "bbb")
    assert (a.id, a.previous, b.id, b.previous) == (2, 1, 3, 2)
    assert b.prev_hash == a.hash and registry.champion() == b
    assert [e.action for e in registry.history()] == ["register", "promote", "promote"]


def test_rollback_walks_back_in_time_and_refuses_the_baseline(tmp_path):
    registry = reg(tmp_path)
    registry.ensure_baseline({})
    for version in ("aaa", "bbb", "ccc"):
        promote(registry, version)
    first = registry.rollback()
    assert (first.version, first.action, first.bento_tag) == (
        "bbb",
        "rollback",
        "shopflow:bento-bbb",
    )
    assert registry.rollback().version == "aaa"  # not back to ccc: a second rollback goes further
    with pytest.raises(RegistryError, match="first model ever promoted"):
        registry.rollback()
    with pytest.raises(RegistryError, match="no Bento to serve"):
        registry.rollback(to=1)
    with pytest.raises(RegistryError, match="already the champion"):
        registry.rollback(to="aaa")
    assert registry.rollback(to="#4").version == "ccc"  # by id, forward again on purpose
    with pytest.raises(RegistryError, match="no registry entry 'zzz'"):
        registry.rollback(to="zzz")
    assert registry.champion().version == "ccc" and len(registry.history()) == 7


def sealed_registry(tmp_path: Path) -> Registry:
    registry = reg(tmp_path)
    registry.ensure_baseline({"search": {"ndcg@10": 0.7}})
    promote(registry, "aaa")
    promote(registry, "bbb")
    return registry


def resealed_without_the_key(raw: dict) -> dict:
    """What an attacker who can write the file but lacks the key can do: recompute every
    public hash (the entry chain) and seal with a key of their own."""
    prev = ""
    entries = []
    for entry in raw["entries"]:
        fixed = Entry(**entry).sealed(prev)
        entries.append(dataclasses.asdict(fixed))
        prev = fixed.hash
    content = {"format": raw["format"], "champion": raw["champion"], "entries": entries}
    forged = Registry("unused", b"a key of the attacker's own, 32+ characters")._seal(content)
    return {**content, "seal": forged}


def edit(field: str, value: object):
    def change(raw: dict) -> dict:
        raw["entries"][1][field] = value
        return raw

    return change


# Each tampering of the registry file and a phrase the error must contain.
TAMPERINGS = {
    "pointer moved back": (lambda raw: {**raw, "champion": 2}, "seal does not match"),
    "pointer to the baseline": (lambda raw: {**raw, "champion": 1}, "seal does not match"),
    "entry edited": (edit("reason", "edited by hand"), "seal does not match"),
    "bento swapped": (edit("bento_tag", "evil:latest"), "seal does not match"),
    "last entry cut off": (
        lambda raw: {**raw, "entries": raw["entries"][:-1], "champion": 2},
        "seal does not match",
    ),
    "entries reordered": (
        lambda raw: {**raw, "entries": raw["entries"][::-1]},
        "seal does not match",
    ),
    "entry duplicated": (
        lambda raw: {**raw, "entries": raw["entries"] + raw["entries"][-1:]},
        "seal does not match",
    ),
    "seal removed": (lambda raw: {k: v for k, v in raw.items() if k != "seal"}, "fields"),
    "seal emptied": (lambda raw: {**raw, "seal": ""}, "seal does not match"),
    "seal of another type": (lambda raw: {**raw, "seal": 7}, "seal does not match"),
    "resealed without the key": (
        lambda raw: resealed_without_the_key({**raw, "champion": 2}),
        "seal does not match",
    ),
    "bento swapped and resealed": (
        lambda raw: resealed_without_the_key(edit("bento_tag", "evil:latest")(raw)),
        "seal does not match",
    ),
    "truncated and resealed": (
        lambda raw: resealed_without_the_key({**raw, "entries": raw["entries"][:1], "champion": 1}),
        "seal does not match",
    ),
    "format changed": (lambda raw: {**raw, "format": 3}, "format 3"),
    "unknown top-level field": (lambda raw: {**raw, "extra": 1}, "fields"),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_every_tampering_of_the_registry_is_detected_and_nothing_is_served(tmp_path, name):
    registry = sealed_registry(tmp_path)
    change, says = TAMPERINGS[name]
    raw = json.loads(registry.path.read_text())
    registry.path.write_text(json.dumps(change(raw)))
    for read in (registry.champion, registry.history, registry.current):
        with pytest.raises(RegistryError, match=says):
            read()
    with pytest.raises(RegistryError, match=says):  # and nothing is written on top of it
        promote(registry, "ccc")


# Files that are not a registry at all, each a clear error (never a traceback).
MALFORMED = {
    "champion as a string": ('{"format": 2, "champion": "2", "entries": [], "seal": ""}', "seal"),
    "champion as a float": ('{"format": 2, "champion": 2.0, "entries": [], "seal": ""}', "seal"),
    "not JSON": ("{not json", "not JSON"),
    "a list": ("[]", "JSON list"),
    "empty file": ("", "not JSON"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "nested too deeply|JSON list"),
    "not UTF-8": (b"\xff\xfe{}", "cannot be read"),
    "format 1": ('{"format": 1, "champion": null, "entries": []}', "registry upgrade"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_a_malformed_registry_file_is_a_clear_error(tmp_path, name):
    text, says = MALFORMED[name]
    registry = reg(tmp_path)
    tmp_path.mkdir(exist_ok=True)
    if isinstance(text, bytes):
        registry.path.write_bytes(text)
    else:
        registry.path.write_text(text)
    with pytest.raises(RegistryError, match=says):
        registry.champion()


def test_wrong_types_under_a_valid_seal_are_named(tmp_path):
    registry = reg(tmp_path)
    registry.ensure_baseline({})
    original = registry.path.read_text()
    for content, says in [
        ({"champion": "1"}, "champion is '1'"),
        ({"champion": True}, "champion is True"),
        ({"entries": {}}, "entries is a dict"),
        ({"entries": [{"id": 1}]}, "missing fields"),
    ]:
        raw = json.loads(original)
        raw.pop("seal")
        raw.update(content)
        registry.path.write_text(json.dumps({**raw, "seal": registry._seal(raw)}))
        with pytest.raises(RegistryError, match=says):
            registry.champion()
    raw = json.loads(original)
    raw.pop("seal")
    raw["entries"][0]["action"] = "delete"
    registry.path.write_text(json.dumps({**raw, "seal": registry._seal(raw)}))
    with pytest.raises(RegistryError, match="action 'delete' is not one of"):
        registry.champion()


def test_a_registry_that_is_a_directory_or_is_missing_is_an_error_where_a_champion_is_expected(
    tmp_path,
):
    (tmp_path / "a" / "registry.json").mkdir(parents=True)
    with pytest.raises(RegistryError, match="cannot be read"):
        reg(tmp_path / "a").champion()
    production = Registry(tmp_path / "b", KEY)  # missing_ok=False: production
    with pytest.raises(RegistryError, match="registry init"):
        production.champion()
    with pytest.raises(RegistryError, match="registry init"):
        production.ensure_baseline({})
    production.init()
    assert production.champion() is None
    assert production.ensure_baseline({}).id == 1
    with pytest.raises(RegistryError, match="already here"):
        production.init()
    production.path.unlink()  # deleted after use: an error, not an empty registry
    with pytest.raises(RegistryError, match="was deleted: restore it"):
        production.current()


def test_another_key_or_the_demo_key_cannot_read_a_registry(tmp_path):
    registry = sealed_registry(tmp_path)
    with pytest.raises(RegistryError, match="seal does not match"):
        Registry(tmp_path, b"another key of 32 or more characters!!").champion()
    demo = Registry(tmp_path / "demo", DEV_KEY.encode(), missing_ok=True)
    demo.ensure_baseline({})
    with pytest.raises(RegistryError, match="public development key"):
        Registry(tmp_path / "demo", KEY).champion()
    assert registry.champion().version == "bbb"


def test_a_format_1_registry_is_sealed_by_upgrade_after_its_old_chain_is_checked(tmp_path):
    import hashlib

    entries, prev = [], ""
    for i, version in enumerate(["baseline", "aaa"], start=1):
        body = {
            **dataclasses.asdict(
                Entry(id=i, action="promote", at=now(), kind="model", version=version)
            ),
            "prev_hash": prev,
            "hash": "",
        }
        body["hash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        entries.append(body)
        prev = body["hash"]
    (tmp_path / "registry.json").write_text(
        json.dumps({"format": 1, "champion": 2, "entries": entries})
    )
    registry = reg(tmp_path)
    with pytest.raises(RegistryError, match="registry upgrade"):
        registry.champion()
    assert registry.upgrade() == 2
    assert registry.champion().version == "aaa" and len(registry.champion().hash) == 64


KILL_AT_COMMIT = """
import os, signal, sys
from shopflow.release.registry import Entry, Registry, now
registry = Registry(sys.argv[1], b"unit-test-registry-key-0123456789abcdef", missing_ok=True)
real_fsync = os.fsync
def fsync_then_die(fd):
    real_fsync(fd)
    os.kill(os.getpid(), signal.SIGKILL)  # the new file is written, the rename has not happened
os.fsync = fsync_then_die
with registry.locked():
    registry.append(Entry(id=0, action="promote", at=now(), kind="model", version="new",
                          model_tag="shopflow:new", bento_tag="b"), make_champion=True)
"""


def test_a_promotion_killed_at_the_commit_point_leaves_the_previous_champion(tmp_path):
    registry = reg(tmp_path)
    registry.ensure_baseline({})
    before = promote(registry, "aaa")
    snapshot = registry.path.read_bytes()
    done = subprocess.run([sys.executable, "-c", KILL_AT_COMMIT, str(tmp_path)], cwd=ROOT)
    assert done.returncode == -signal.SIGKILL
    assert registry.path.read_bytes() == snapshot
    assert registry.champion() == before and len(registry.history()) == 2
    # the lock died with the process: the next promotion goes through, chained correctly
    after = promote(registry, "bbb")
    assert after.id == 3 and after.prev_hash == before.hash


def _promote_many(folder: str, worker: int) -> None:
    registry = reg(folder)
    for i in range(5):
        promote(registry, f"w{worker}-{i}")


def test_concurrent_writers_are_serialised(tmp_path):
    reg(tmp_path).ensure_baseline({})
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_promote_many, args=(str(tmp_path), w)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    history = reg(tmp_path).history()  # reading verifies the whole hash chain
    assert len(history) == 21 and [e.id for e in history] == list(range(1, 22))
    assert len({e.version for e in history}) == 21
    assert not list(Path(tmp_path).glob(".registry-*.tmp"))


def _race_to_promote(folder: str, night: int, start, outcomes) -> None:
    registry = reg(folder)
    decided_against = registry.current()  # both nights evaluated against the same champion
    start.wait()  # ... and reach the commit at the same moment
    candidate = Entry(id=0, action="promote", at=now(), kind="model", version=f"night-{night}")
    try:
        registry.replace_champion(decided_against, candidate)
        outcomes.put((night, "promoted"))
    except RegistryError as exc:
        outcomes.put((night, str(exc)))


def test_two_nights_racing_to_promote_leave_exactly_one_champion(tmp_path):
    reg(tmp_path).ensure_baseline({})
    context = multiprocessing.get_context("spawn")
    start, outcomes = context.Barrier(2), context.Queue()
    nights = [
        context.Process(target=_race_to_promote, args=(str(tmp_path), n, start, outcomes))
        for n in (1, 2)
    ]
    for process in nights:
        process.start()
    for process in nights:
        process.join(timeout=120)
        assert process.exitcode == 0
    results = dict(outcomes.get(timeout=10) for _ in nights)
    winners = [n for n, said in results.items() if said == "promoted"]
    assert len(winners) == 1, results
    (loser,) = set(results) - set(winners)
    assert f"the champion moved to #2 (night-{winners[0]})" in results[loser]
    registry = reg(tmp_path)
    history = registry.history()  # reading verifies the hash chain
    assert [e.action for e in history] == ["register", "promote"]
    assert registry.current().version == f"night-{winners[0]}" and history[1].previous == 1


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "no decision; run the evaluate stage"),
        ("garbage", "not JSON"),
        ("[]", "not a decision of the evaluate stage"),
        ('{"verdict": "promote", "reasons": []}', "no ['champion', 'metrics', 'primary']"),
        (
            '{"verdict": "maybe", "reasons": [], "champion": {}, "metrics": {}, "primary": {}}',
            "verdict 'maybe'",
        ),
        (
            '{"verdict": "reject", "reasons": [], "champion": {}, "metrics": {}, "primary": {}}',
            "champion lacks",
        ),
    ],
)
def test_promote_names_what_is_wrong_with_a_decision_file(tmp_path, text, says):
    from shopflow.core.errors import StageInputError
    from shopflow.evaluation.gate import (
        read_decision,  # promote and the Airflow DAG both read through it
    )

    path = tmp_path / "decision.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(StageInputError, match=re.escape(says)):
        read_decision(path)


def test_a_forced_promotion_needs_a_reason_and_who():
    from shopflow.core.errors import StageInputError
    from shopflow.release.promotion import Override

    with pytest.raises(StageInputError, match="needs a reason"):
        Override(by="alice", reason=" ")
    with pytest.raises(StageInputError, match="who forced it"):
        Override(by="", reason="hotfix")
    assert Override(by="alice", reason="hotfix").reason == "hotfix"
