"""The run log and the run report's logic and pages, on hand-made runs (no pipeline run)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from shopflow.core.errors import DataValidationError, StageInputError
from shopflow.orchestration import runlog
from shopflow.reporting import facts, pages
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

STAGES = ["ingest", "validate", "drift", "prepare", "evaluate", "promote"]


def record(
    run_id: str, stage: str, status: str = "success", at: str = "2026-10-28T02:00:00", **extra
) -> dict:
    return {
        "run_id": run_id,
        "stage": stage,
        "status": status,
        "started_at": at,
        "finished_at": at,
        "seconds": 1.5,
        "exit_code": 0,
        **extra,
    }


VALID = {
    "passed": True,
    "critical_failures": 0,
    "warnings": 0,
    "quarantined_rows": 0,
    "checked_rows": {"events": 10},
    "failures": [],
}
DRIFT = {
    "decision": "none",
    "date": "2026-10-28",
    "reasons": ["no drift"],
    "features": [],
    "dataset_drift_share": 0.0,
    "reference": {"source": "champion", "days": "x", "rows": 5},
    "current": {"days": "y", "rows": 5},
}


def bare_run(**overrides) -> dict:
    """A run before any output exists: the report must still render."""
    run = {
        "run_id": "manual__2026-10-28",
        "night": "2026-10-28",
        "profile": "tiny",
        "written_at": "2026-10-28T03:00:00+00:00",
        "started_at": None,
        "finished_at": None,
        "git_revision": "abc",
        "params_hash": "def",
        "stages": [],
        "stage_seconds": 0.0,
        "data": None,
        "validation": None,
        "drift": None,
        "drift_fresh": False,
        "training": {
            s: {"metrics": None, "curves": []} for s in ("pretrain", "retriever", "reranker")
        },
        "decision": None,
        "decision_fresh": False,
        "alerts": [],
        "promotion": {"outcome": None, "champion": None, "timeline": [], "service": None},
    }
    run |= overrides
    run["outcome"] = facts.outcome(run)
    return run


def test_the_run_log_records_success_and_failure_with_the_error(tmp_path, monkeypatch):
    monkeypatch.setenv(runlog.RUN_ID_ENV, "night-1")
    log = tmp_path / "stages.jsonl"
    with runlog.recorded("ingest", log):
        pass
    with pytest.raises(DataValidationError), runlog.recorded("validate", log):
        raise DataValidationError("validation failed: products.price >= 0")
    with log.open("a") as handle:
        handle.write('{"run_id": "night-1", "sta')  # a writer killed mid-line
    ingest, validate = runlog.read(log)
    assert ingest["status"] == "success" and ingest["run_id"] == "night-1"
    assert validate["status"] == "failed" and validate["exit_code"] == 3
    assert "price >= 0" in validate["error"] and validate["seconds"] >= 0


def test_stages_run_by_one_process_share_a_run_id_and_another_process_gets_another(
    monkeypatch,
):
    monkeypatch.delenv(runlog.RUN_ID_ENV, raising=False)
    code = "from shopflow.orchestration import runlog; print(runlog.current_run_id())"
    ids = [
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert ids[0] == ids[1]  # two stages started by one process (here: this test): one run
    assert ids[0].endswith(f"-{os.getpid()}")
    assert ids[0].startswith("repro-")


def test_stages_dvc_starts_through_a_shell_that_does_not_exec_share_the_run_of_dvc(monkeypatch):
    """DVC runs `$SHELL -c <cmd>`, `/bin/sh` when SHELL is unset; Debian's dash forks the command
    instead of exec'ing it, so the stage's parent is a different shell each time."""
    monkeypatch.delenv(runlog.RUN_ID_ENV, raising=False)
    monkeypatch.setenv(runlog.DVC_STAGE_ENV, "ingest")
    code = "from shopflow.orchestration import runlog; import os; print(runlog.current_run_id(), os.getppid())"
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}; true"  # `; true`: no exec
    lines = [
        subprocess.run(
            ["/bin/sh", "-c", command], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    (first, shell_1), (second, shell_2) = lines
    assert shell_1 != shell_2 != str(os.getpid())  # each stage had a shell of its own
    assert first == second and first.endswith(f"-{os.getpid()}")  # the run of this process


def test_a_retried_stage_shows_its_last_attempt_and_the_latest_run_is_found():
    records = [
        record("a", "ingest", at="2026-10-27T02:00:00"),
        record("b", "ingest", "failed", at="2026-10-28T02:00:00", error="boom"),
        record("b", "ingest", at="2026-10-28T02:10:00"),
    ]
    assert runlog.latest_run_id(records) == "b"
    (ingest,) = runlog.of_run(records, "b").values()
    assert ingest["status"] == "success" and ingest["attempts"] == 2
    rows = facts.stage_rows(["ingest", "validate"], records, "b")
    assert rows[1] == {"stage": "validate", "status": "not run"}


def test_a_run_that_only_re_read_the_service_logs_is_not_a_run_of_its_own():
    records = [
        record("a", "online", at="2026-10-27T02:00:00"),
        record("a", "ingest", at="2026-10-27T02:00:05"),
        record("b", "online", at="2026-10-28T02:00:00"),  # a `dvc repro` with nothing to do
        record("c", "online", "failed", at="2026-10-29T02:00:00", error="bad params"),
    ]
    assert {r["run_id"] for r in runlog.substantive(records)} == {"a", "c"}  # failures count
    assert runlog.latest_run_id(records) == "c"
    assert runlog.latest_run_id(records[:3]) == "a"
    assert runlog.latest_run_id(records[2:3]) == "b"  # nothing else: the run there is


def test_the_outcome_names_the_failed_stage_first():
    failed = [
        {"stage": "ingest", "status": "success"},
        {
            "stage": "validate",
            "status": "failed",
            "exit_code": 3,
            "error": "validation failed: 1 critical rule(s) broken\n[critical] ...",
        },
    ]
    outcome = bare_run(stages=failed)["outcome"]
    assert outcome == {
        "verdict": "failed",
        "summary": "failed at validate: validation failed: 1 critical rule(s) broken",
    }


def test_the_outcome_of_a_night_without_retraining_and_of_one_that_ran_nothing():
    drift = {"decision": "none", "reasons": ["no drift in 20 measured features"]}
    quiet = bare_run(
        stages=[{"stage": s, "status": "success"} for s in ("ingest", "drift")],
        drift=drift,
        drift_fresh=True,
    )
    assert quiet["outcome"]["verdict"] == "no retrain"
    assert "no drift in 20" in quiet["outcome"]["summary"]
    assert bare_run()["outcome"]["verdict"] == "up to date"
    assert bare_run(run_id=facts.WORKSPACE)["outcome"]["verdict"] == "workspace"


def test_the_outcome_is_promoted_only_when_the_champion_changed():
    decision = {"verdict": "promote", "reasons": ["search_ndcg@10 +0.02"]}
    promoted = {"verdict": "promote", "promoted": 1, "champion": {"entry": 3, "version": "v9"}}
    ran = [{"stage": "evaluate", "status": "success"}, {"stage": "promote", "status": "success"}]
    run = bare_run(
        stages=ran, decision=decision, decision_fresh=True, promotion={"outcome": promoted}
    )
    assert run["outcome"] == {"verdict": "promoted", "summary": "champion is now #3 v9"}
    already = bare_run(
        stages=ran,
        decision=decision,
        decision_fresh=True,
        promotion={"outcome": promoted | {"already": True}},
    )
    assert already["outcome"]["verdict"] == "promote decided"
    rejected = bare_run(
        stages=ran[:1],
        decision={"verdict": "reject", "reasons": ["guardrail"]},
        decision_fresh=True,
    )
    assert rejected["outcome"] == {"verdict": "rejected", "summary": "guardrail"}


def test_a_page_renders_before_any_output_exists():
    page = pages.render_run(bare_run(), {}, {"data_docs": False, "drift": False})
    assert "No ingested data" in page and "No A/B decision" in page
    assert 'href="../index.html"' in page and "<script" not in page


def test_a_judgments_only_source_shows_its_merged_ratings(tmp_path):
    from shopflow.core import paths

    ingested = tmp_path / paths.INGESTED
    ingested.mkdir(parents=True)
    repeated = {
        "policy": "mean",
        "repeated_pairs": 2,
        "extra_rows": 3,
        "max_ratings_per_pair": 3,
        "disagreement_share": 1.0,
        "disagreement_over_1_share": 0.5,
        "max_spread": 2.0,
    }
    manifest = {
        "source": "judgments",
        "window": {},
        "quarantined_rows": 0,
        "tables": {"judgments": {"rows": 3, "sha256": "ab"}},
        "repeated_judgments": repeated,
    }
    (ingested / "manifest.json").write_text(json.dumps(manifest))
    data = facts.data_section(tmp_path)  # no events table: no rows per day, no error
    assert data is not None and data["per_day"] == {} and data["repeated_judgments"] == repeated
    page = pages.render_run(bare_run(data=data), {}, {"data_docs": False, "drift": False})
    assert "2 (query, product) pair(s) rated more than once" in page
    assert "50.0% by more than one grade" in page and "repeated_judgments: mean" in page


def test_values_from_the_data_are_escaped():
    validation = {
        "passed": False,
        "critical_failures": 1,
        "warnings": 0,
        "quarantined_rows": 0,
        "checked_rows": {"products": 3},
        "failures": [
            {
                "table": "products",
                "column": "title",
                "rule": "max length",
                "severity": "critical",
                "unexpected_count": 1,
                "sample": [{"row": 2, "values": "<script>alert(1)</script>"}],
            }
        ],
    }
    page = pages.render_run(
        bare_run(validation=validation), {}, {"data_docs": True, "drift": False}
    )
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert 'href="data_docs/index.html"' in page


def test_old_runs_lose_their_linked_copies_but_keep_their_page(tmp_path):
    for i, started in enumerate(("2026-10-27T02:00:00", "2026-10-28T02:00:00")):
        folder = tmp_path / f"run{i}"
        for name in pages.LINKED:
            (folder / name).mkdir(parents=True)
            (folder / name / "index.html").write_text("copy")
        run = bare_run(run_id=f"run{i}", started_at=started, validation=VALID, drift=DRIFT) | {
            "charts": {},
            "linked": dict.fromkeys(pages.LINKED, True),
        }
        (folder / "run.json").write_text(json.dumps(run))
    runs = pages.index_runs(tmp_path, keep_linked=1)
    assert [r["run_id"] for r in runs] == ["run1", "run0"]  # newest first
    assert (tmp_path / "run1/drift/index.html").exists()
    assert not (tmp_path / "run0/drift").exists() and not (tmp_path / "run0/data_docs").exists()
    old = (tmp_path / "run0/index.html").read_text()
    assert 'href="drift/index.html"' not in old and 'href="data_docs/index.html"' not in old
    assert "Evidently copy removed" in old and "Data Docs copy removed" in old
    assert json.loads((tmp_path / "run0/run.json").read_text())["linked_pruned"] is True


def test_run_folders_are_safe_names():
    assert pages.folder_name("scheduled__2026-10-28T02:00:00+00:00") == (
        "scheduled__2026-10-28T02-00-00-00-00"
    )
    for hostile in ("..", "../..", "/etc/passwd", ""):
        name = pages.folder_name(hostile)
        assert "/" not in name and not name.startswith(".") and name


def test_an_unreadable_part_is_named_on_the_page_and_the_rest_still_renders(tmp_path):
    problems = facts.Problems()
    assert problems.guard("ingested data", facts.data_section, tmp_path) is None  # no data yet
    (tmp_path / "data/ingested").mkdir(parents=True)
    (tmp_path / "data/ingested/manifest.json").write_text('{"tables": {}}')
    (tmp_path / "data/ingested/events.parquet").write_bytes(b"not parquet")
    assert problems.guard("ingested data", facts.data_section, tmp_path) is None
    assert len(problems) == 1 and problems[0].startswith("ingested data: ")
    page = pages.render_run(bare_run(problems=problems), {}, {"data_docs": False, "drift": False})
    assert 'id="problems"' in page and "ingested data: " in page and "No ingested data" in page


def test_a_dvc_failure_before_any_stage_ran_fails_the_run_with_dvcs_error(tmp_path):
    output = tmp_path / "repro.log"
    output.write_text(
        "Verifying data sources\nERROR: failed to reproduce 'ingest': [Errno 2] "
        "No such file or directory: 'log.csv'\n"
    )
    runner = facts.runner_result(255, output)
    run = bare_run(runner=runner)
    assert run["outcome"] == {
        "verdict": "failed",
        "summary": "dvc repro exited with 255: "
        "ERROR: failed to reproduce 'ingest': [Errno 2] No such file or "
        "directory: 'log.csv'",
    }
    page = pages.render_run(run, {}, {"data_docs": False, "drift": False})
    assert 'id="runner"' in page and "No such file or directory" in page
    assert bare_run(runner=facts.runner_result(0))["outcome"]["verdict"] == "up to date"


def test_a_page_the_template_cannot_render_falls_back_to_a_plain_one():
    run = bare_run(decision={"verdict": "reject"}, decision_fresh=True)  # no numbers in it
    page = pages.render_or_fallback(run, {}, {"data_docs": False, "drift": False})
    assert "could not be rendered" in page and 'href="run.json"' not in page
    assert "href='run.json'" in page and ">rejected<" in page


def test_the_serving_mix_shows_every_candidate_and_why_one_was_served():
    mix = {
        "chosen": "hybrid",
        "candidates": {
            "dense": {"valid_ndcg@10": 0.81, "p50_ms": 18.0, "n": 80},
            "hybrid": {"valid_ndcg@10": 0.84, "p50_ms": 19.5, "n": 80, "p_value": 0.004},
            "dense+reranker": {"valid_ndcg@10": 0.83, "p50_ms": 650.0, "n": 80, "p_value": 0.9},
        },
        "reasons": ["hybrid: valid NDCG@10 +0.0300 over dense (p=0.004, n=80) is a gain"],
    }
    search = {"ndcg@10": 0.8, "mrr@10": 0.7, "recall@100": 0.9}
    train = {"final_loss": 1.0, "steps": 2, "seconds": 1.0, "device": "cpu", "samples_per_s": 9}
    metrics = {"test": {"search": search}, "train": train, "serving_mix": mix}
    run = bare_run()
    run["training"]["reranker"] = {"metrics": metrics, "curves": []}
    page = pages.render_run(run, {}, {"data_docs": False, "drift": False})
    assert "Serving mix: <code>hybrid</code>" in page
    table = page[page.index('id="serving-mix-table"') :]
    assert "dense+reranker" in table and "650.0" in table and "0.004<" in table
    assert "is a gain" in page


def test_timings_stay_out_of_what_dvc_hashes_and_come_back_in_the_report(tmp_path, monkeypatch):
    from shopflow.core import paths
    from shopflow.core.artifacts import read_json, with_timings, without_timings, write_metrics

    result = {
        "ndcg@10": 0.8,
        "train": {"steps": 3, "seconds": 1.5, "samples_per_s": 90.0, "device": "cpu"},
        "serving_mix": {"candidates": {"dense": {"p50_ms": 4.2, "n": 9}}},
    }
    kept, timed = without_timings(result)
    assert kept == {
        "ndcg@10": 0.8,
        "train": {"steps": 3, "device": "cpu"},
        "serving_mix": {"candidates": {"dense": {"n": 9}}},
    }
    assert timed == {
        "train.seconds": 1.5,
        "train.samples_per_s": 90.0,
        "serving_mix.candidates.dense.p50_ms": 4.2,
    }
    assert with_timings(kept, timed) == result
    monkeypatch.chdir(tmp_path)
    first = write_metrics("retriever", result)
    metrics_bytes = paths.metrics("retriever").read_bytes()
    write_metrics("retriever", with_timings(kept, {k: v * 2 for k, v in timed.items()}))
    assert (
        paths.metrics("retriever").read_bytes()
        == metrics_bytes
        == (json.dumps(first, indent=2, sort_keys=True) + "\n").encode()
    )  # a slower run writes the same metrics file
    assert read_json(paths.timings("retriever"))["train.seconds"] == 3.0
    assert facts.training_section(tmp_path)["retriever"]["metrics"]["train"]["seconds"] == 3.0


def test_a_folder_without_dvc_yaml_is_named_not_a_traceback(tmp_path):
    with pytest.raises(StageInputError, match=r"no dvc\.yaml in .*project's folder"):
        facts.pipeline_stages(tmp_path)
