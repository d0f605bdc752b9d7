"""The prepared GPU check runs where CI runs: on a CPU, at tiny sizes, the way a GPU machine
runs it (from the source tree, with a model folder holding a config and a tokenizer only)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shopflow.models.base import resolve_base_model
from tests.conftest import ROOT

pytestmark = pytest.mark.model


def test_the_gpu_check_reports_every_figure_from_a_weightless_model_folder(in_tmp):
    tiny = Path(resolve_base_model("tiny-random-bert"))
    model = in_tmp / "model"
    shutil.copytree(tiny, model, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    out = in_tmp / "out" / "gpu_check.json"
    command = [
        sys.executable,
        "-m",
        "tools.bench.gpu_check",
        "--model",
        str(model),
        "--out",
        str(out),
        "--texts",
        "300",
        "--steps",
        "1",
        "--params",
        str(ROOT / "params.yaml"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=in_tmp, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["profile"] == "tiny"
    assert result["peak"]["tflops"] > 0
    assert [row["model"] for row in result["training"]] == ["pretrain", "retriever", "reranker"]
    assert result["training"][0]["trainer"] == "transformers.Trainer"  # the stage's own path
    assert all(row["samples_per_s"] > 0 and row["tokens_per_s"] > 0 for row in result["training"])
    assert result["embedding"]["texts"] == 300 and result["embedding"]["texts_per_s"] > 0
    assert [row["batch"] for row in result["scoring"]] == [256, 1024]
    assert all(0 < row["p50_ms"] <= row["p95_ms"] for row in result["scoring"])
    assert all(row["pairs_per_s"] > 0 for row in result["scoring"])
