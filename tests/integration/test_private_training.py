"""Private training end to end on the tiny shop: the retriever trained with user-level DP-SGD
records the ε it spent in its stage metrics, in its model's metadata, in the service's
/version, in the gate's checks and in the run report; the membership audit runs beside it."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import torch
from safetensors.torch import load_file

from pipelines import evaluate, retriever
from shopflow.core import paths
from shopflow.core.artifacts import read_json
from shopflow.serving.local import SERVICE, RunningService, free_port
from tests.conftest import ROOT, tiny_params
from tests.integration.conftest import MODEL_OVERRIDES, run_in, shopflow

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PRIVATE = (
    "privacy.dp.enabled=true",
    "privacy.dp.epsilon=8",
    "privacy.dp.users_per_step=8",
    "privacy.dp.public_negatives=16",
    "privacy.dp.audit_share=0.2",
    "reranker.click_share=0",
)


def test_a_private_retriever_records_its_epsilon_from_stage_to_report(shop, tmp_path):
    work = tmp_path / "private"
    shutil.copytree(shop["work"] / paths.DATA, work / paths.DATA)
    shutil.copy(ROOT / "dvc.yaml", work / "dvc.yaml")  # the report lists its stages
    params = tiny_params(*MODEL_OVERRIDES, *PRIVATE)
    run_in(work, retriever.run, params)

    # the stage: spent within the budget, by the plan's accountant; the audit beside it
    stage = read_json(work / paths.metrics("retriever"))
    spent = stage["privacy"]["epsilon_spent"]
    assert 0 < spent <= 8.0 and stage["privacy"]["unit"] == "customer or judged query"
    assert stage["privacy"]["steps"] == params.retriever.steps
    assert (
        stage["privacy"]["noise_multiplier"] > 0
        and stage["privacy"]["delta"] < 1 / (stage["privacy"]["units"])
    )
    assert 0 <= stage["membership"]["auc"] <= 1 and stage["membership"]["outsiders"] > 0
    # the model, its token embeddings untouched (privacy.dp.train_embeddings: false)
    assert read_json(work / paths.RETRIEVER / "shopflow.json")["privacy"] == stage["privacy"]
    trained, base = (word_embeddings(work / folder) for folder in (paths.RETRIEVER, paths.ENCODER))
    assert torch.equal(trained, base)

    # the gate: a privacy check, passed within the budget
    run_in(work, evaluate.run, params)
    decision = read_json(work / paths.DECISION)
    check = next(c for c in decision["checks"] if c["name"] == "guardrail privacy ε spent")
    assert check["passed"], check
    assert decision["privacy"]["challenger"]["epsilon_spent"] == spent

    # the saved model and the service's /version
    overrides = [a for o in ("profile=tiny", *MODEL_OVERRIDES, *PRIVATE) for a in ("-S", o)]
    tag = shopflow(work, shop["env"], *overrides, "save-model")
    env = {**shop["env"], "SHOPFLOW_MODEL": tag}
    with RunningService(SERVICE, free_port(), env, cwd=ROOT, log_path=work / "serve.log") as base:
        about = httpx.get(f"{base}/version", timeout=30).json()
    assert about["privacy"]["epsilon_spent"] == spent

    # the run report
    page = work / shopflow(work, shop["env"], *overrides, "report")
    run = json.loads((page.parent / "run.json").read_text())
    assert run["training"]["retriever"]["metrics"]["privacy"]["epsilon_spent"] == spent
    html = page.read_text()
    assert 'id="privacy"' in html and 'id="membership"' in html


def word_embeddings(folder) -> torch.Tensor:
    (weights,) = (
        w
        for name, w in load_file(folder / "model.safetensors").items()
        if name.endswith("word_embeddings.weight")
    )
    return weights
