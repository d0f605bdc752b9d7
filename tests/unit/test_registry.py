"""The registry: atomic, serialised, append-only, tamper-evident; rollback walks back in time."""

from __future__ import annotations

import json
import multiprocessing
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shopflow.release.registry import BASELINE_VERSION, Entry, Registry, RegistryError, now
from tests.conftest import ROOT

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
    registry = Registry(tmp_path / "reg")
    assert registry.champion() is None and registry.history() == []
    first = registry.ensure_baseline({"search": {"ndcg@10": 0.68}})
    again = registry.ensure_baseline({"search": {"ndcg@10": 0.99}})
    assert first == again and first.version == BASELINE_VERSION and first.id == 1
    assert registry.champion() == first and len(registry.history()) == 1


def test_promotions_chain_and_record_what_they_replaced(tmp_path):
    registry = Registry(tmp_path)
    registry.ensure_baseline({})
    a = promote(registry, "aaa")
    b = promote(registry, "bbb")
    assert (a.id, a.previous, b.id, b.previous) == (2, 1, 3, 2)
    assert b.prev_hash == a.hash and registry.champion() == b
    assert [e.action for e in registry.history()] == ["register", "promote", "promote"]


def test_rollback_walks_back_in_time_and_refuses_the_baseline(tmp_path):
    registry = Registry(tmp_path)
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


def test_a_tampered_or_truncated_log_is_detected(tmp_path):
    registry = Registry(tmp_path)
    registry.ensure_baseline({})
    promote(registry, "aaa")
    promote(registry, "bbb")
    raw = json.loads(registry.path.read_text())
    raw["entries"][1]["reason"] = "edited by hand"
    registry.path.write_text(json.dumps(raw))
    with pytest.raises(RegistryError, match="entry #2 was altered"):
        registry.champion()
    raw = json.loads(registry.path.read_text())
    raw["entries"][1]["reason"] = "test"
    del raw["entries"][0]
    registry.path.write_text(json.dumps(raw))
    with pytest.raises(RegistryError, match="entry #1 was altered or entries were removed"):
        registry.history()
    registry.path.write_text("{not json")
    with pytest.raises(RegistryError, match="not a shopflow registry"):
        registry.history()


KILL_AT_COMMIT = """
import os, signal, sys
from shopflow.release.registry import Entry, Registry, now
registry = Registry(sys.argv[1])
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
    registry = Registry(tmp_path)
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
    registry = Registry(folder)
    for i in range(5):
        promote(registry, f"w{worker}-{i}")


def test_concurrent_writers_are_serialised(tmp_path):
    Registry(tmp_path).ensure_baseline({})
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_promote_many, args=(str(tmp_path), w)) for w in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        assert process.exitcode == 0
    history = Registry(tmp_path).history()  # reading verifies the whole hash chain
    assert len(history) == 21 and [e.id for e in history] == list(range(1, 22))
    assert len({e.version for e in history}) == 21
    assert not list(Path(tmp_path).glob(".registry-*.tmp"))


def _race_to_promote(folder: str, night: int, start, outcomes) -> None:
    registry = Registry(folder)
    decided_against = registry.current()  # both nights evaluated against the same champion
    start.wait()  # ... and reach the commit at the same moment
    candidate = Entry(id=0, action="promote", at=now(), kind="model", version=f"night-{night}")
    try:
        registry.replace_champion(decided_against, candidate)
        outcomes.put((night, "promoted"))
    except RegistryError as exc:
        outcomes.put((night, str(exc)))


def test_two_nights_racing_to_promote_leave_exactly_one_champion(tmp_path):
    Registry(tmp_path).ensure_baseline({})
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
    registry = Registry(tmp_path)
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
