"""pretrain-adapt on the tiny random BERT: it learns, it resumes exactly, it runs under DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipelines import pretrain
from shopflow.core.errors import ConfigError, TrainingError
from shopflow.models.base import resolve_base_model
from shopflow.training import masked_lm
from tests.conftest import ROOT, tiny_params

pytestmark = pytest.mark.model

WORDS = ["sofa", "couch", "grey", "oak", "lamp", "rug", "velvet", "blue", "kettle", "steel"]


def write_corpus(folder: Path, lines: int = 400) -> Path:
    """Text with a learnable pattern: 'colour noun' pairs that always co-occur."""
    path = folder / "data" / "prepared" / "corpus.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"{WORDS[i % 5 + 5]} {WORDS[i % 5]} by acme number {i % 7}" for i in range(lines)]
    path.write_text("\n".join(rows) + "\n")
    return path


def encoder_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_mlm_loss_drops_and_outputs_are_written(in_tmp):
    write_corpus(in_tmp)
    result = pretrain.run(tiny_params("pretrain.steps=40"))
    assert result["heldout_loss_after"] < 0.9 * result["heldout_loss_before"]
    out = in_tmp / "data" / "models" / "encoder"
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    metrics = json.loads((in_tmp / "metrics" / "pretrain.json").read_text())
    assert metrics["relative_drop"] > 0.1 and "tokens_per_s" not in metrics  # a timing
    timings = json.loads((in_tmp / ".shopflow" / "timings" / "pretrain.json").read_text())
    assert timings["tokens_per_s"] > 0 and timings["seconds"] > 0
    assert (
        in_tmp / "dvclive" / "pretrain" / "plots" / "metrics" / "train" / "mlm_loss.tsv"
    ).exists()
    valid = pd.read_csv(in_tmp / "dvclive/pretrain/plots/metrics/valid/mlm_loss.tsv", sep="\t")
    assert valid["step"].tolist() == [0, 10, 20, 30, 40]  # before, each checkpoint (tiny: 10)
    assert valid["mlm_loss"].iloc[-1] == pytest.approx(result["heldout_loss_after"], abs=1e-4)
    assert not list((in_tmp / ".checkpoints" / "pretrain").glob("*/checkpoint-*"))  # cleaned up
    from transformers import AutoModel

    assert AutoModel.from_pretrained(out).config.hidden_size == 64
    assert metrics["heldout_unigram_loss"] > 0
    assert metrics["below_unigram"] == (
        metrics["heldout_loss_after"] < metrics["heldout_unigram_loss"]
    )


def test_the_unigram_loss_is_the_cross_entropy_of_training_frequencies():
    """One word three times in four in training: a held-out text of that word alone costs
    -log p(word) per masked token, with add-one smoothing over the vocabulary."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("tiny-random-bert"))
    cfg = tiny_params("pretrain.mask_prob=0.5").pretrain
    train = masked_lm.TokenizedLines(["sofa sofa sofa lamp"] * 50, tokenizer, 16)
    heldout = masked_lm.TokenizedLines(["sofa sofa sofa sofa sofa sofa"] * 8, tokenizer, 16)
    masked = masked_lm.fixed_masks(heldout, masked_lm.MaskingCollator(tokenizer, cfg))
    assert sum(label != -100 for row in masked for label in row["labels"]) > 0
    expected = -np.log((150 + 1) / (200 + len(tokenizer)))
    assert masked_lm.unigram_loss(train, masked, tokenizer) == pytest.approx(expected)


def test_held_out_masks_are_the_same_every_time_and_leave_the_global_rng_alone():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("tiny-random-bert"))
    collator = masked_lm.MaskingCollator(tokenizer, tiny_params().pretrain)
    lines = masked_lm.TokenizedLines([f"grey sofa number {i}" for i in range(20)], tokenizer, 16)
    torch.manual_seed(1)
    expected_next = torch.rand(3)
    torch.manual_seed(1)
    first = masked_lm.fixed_masks(lines, collator)
    assert torch.equal(torch.rand(3), expected_next)
    assert masked_lm.fixed_masks(lines, collator) == first
    padded = collator(first[:4])  # masked already: padded, not masked again
    assert padded["labels"].shape == padded["input_ids"].shape
    assert padded["input_ids"][0, : len(first[0]["input_ids"])].tolist() == first[0]["input_ids"]


def test_the_held_out_loss_weighs_every_masked_token_alike():
    """Two batches of 1 and 3 masked tokens: the mean over the 4 tokens, not of the two
    batch means (the trainer's own eval_loss)."""
    from transformers import EvalPrediction

    losses = np.array([[1.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    labels = np.array([[5, -100, -100], [5, 6, 7]])
    got = masked_lm.heldout_loss(EvalPrediction(predictions=losses, label_ids=labels))
    assert got["heldout_loss"] == pytest.approx(7 / 4)


def test_a_loss_that_does_not_drop_fails_loudly(in_tmp, monkeypatch):
    write_corpus(in_tmp)
    monkeypatch.setattr(masked_lm, "heldout_loss", lambda *a, **k: {"heldout_loss": 5.0})
    with pytest.raises(TrainingError, match="did not drop"):
        pretrain.run(tiny_params("pretrain.steps=2"))
    assert not (in_tmp / "data" / "models" / "encoder").exists()


def test_disabled_passes_the_base_encoder_through(in_tmp):
    pretrain.run(tiny_params("pretrain.enabled=false"))
    base = Path(resolve_base_model("tiny-random-bert"))
    out = in_tmp / "data" / "models" / "encoder"
    adapted, original = encoder_weights(out), encoder_weights(base)
    assert adapted.keys() == original.keys()
    assert all(torch.equal(adapted[k], original[k]) for k in adapted)
    assert json.loads((in_tmp / "metrics" / "pretrain.json").read_text())["enabled"] is False


def test_missing_base_model_fails_clearly_without_network(in_tmp, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a network call was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ConfigError) as err:
        resolve_base_model("no-such-org/no-such-model")
    assert "not available locally" in str(err.value) and "allow_download" in str(err.value)
    with pytest.raises(ConfigError, match=r"without config\.json"):
        resolve_base_model(str(in_tmp))


def cli(
    folder: Path, *args: str, launcher: list[str] | None = None, env: dict | None = None
) -> subprocess.Popen:
    command = [
        *(launcher or [sys.executable]),
        "-m",
        "shopflow",
        "--params",
        str(ROOT / "params.yaml"),
        "-S",
        "profile=tiny",
        *args,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


RESUME_ARGS = (
    "-S",
    "pretrain.steps=60",
    "-S",
    "pretrain.checkpoint_every=5",
    "-S",
    "pretrain.batch_size=8",
    "pretrain",
)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_result(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for folder in (straight, killed):
        write_corpus(folder)
    assert cli(straight, *RESUME_ARGS).wait(timeout=600) == 0

    proc = cli(killed, *RESUME_ARGS)
    deadline = time.time() + 300
    while not (
        list(killed.glob(".checkpoints/pretrain/*/checkpoint-*/trainer_state.json"))
        or time.time() > deadline
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "data" / "models" / "encoder").exists(), (
        "the run finished before it was killed"
    )
    live = pd.read_csv(killed / "dvclive/pretrain/plots/metrics/train/mlm_loss.tsv", sep="\t")
    assert live["step"].max() >= 5, "the curve is written while training runs, not after"
    resumed = cli(killed, *RESUME_ARGS)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert "resuming from the checkpoint at step" in output
    a = encoder_weights(straight / "data" / "models" / "encoder")
    b = encoder_weights(killed / "data" / "models" / "encoder")
    assert all(torch.equal(a[k], b[k]) for k in a), (
        "resumed weights differ from the uninterrupted run"
    )
    metrics_a = json.loads((straight / "metrics" / "pretrain.json").read_text())
    metrics_b = json.loads((killed / "metrics" / "pretrain.json").read_text())
    assert metrics_b["resumed_from_step"] > 0
    assert metrics_a["heldout_loss_after"] == metrics_b["heldout_loss_after"]
    curve = "dvclive/pretrain/plots/metrics/valid/mlm_loss.tsv"  # carried in the checkpoint
    assert (straight / curve).read_text() == (killed / curve).read_text()


@pytest.mark.slow
def test_ddp_path_runs_with_two_cpu_processes(tmp_path):
    write_corpus(tmp_path)
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--standalone",
    ]
    proc = cli(tmp_path, "-S", "pretrain.steps=8", "pretrain", launcher=launcher)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    metrics = json.loads((tmp_path / "metrics" / "pretrain.json").read_text())
    assert (
        metrics["world_size"] == 2
        and metrics["heldout_loss_after"] < metrics["heldout_loss_before"]
    )


def test_the_same_data_and_params_give_the_same_files_whatever_the_hash_seed(tmp_path):
    """Reproducible runs: pretrain twice, each in a fresh process with another
    PYTHONHASHSEED (and no checkpoint to resume from): every output byte-identical, the
    metrics file included; only the timings (not hashed by DVC) differ."""
    write_corpus(tmp_path)
    outputs = []
    for seed in ("1", "2"):
        shutil.rmtree(tmp_path / ".checkpoints", ignore_errors=True)
        done = cli(tmp_path, "pretrain", env={"PYTHONHASHSEED": seed})
        assert done.wait(timeout=600) == 0, done.stdout.read() if done.stdout else ""
        files = [
            *sorted((tmp_path / "data/models/encoder").rglob("*")),
            tmp_path / "metrics/pretrain.json",
        ]
        outputs.append(
            {p.relative_to(tmp_path).as_posix(): p.read_bytes() for p in files if p.is_file()}
        )
    assert outputs[0].keys() == outputs[1].keys() and len(outputs[0]) >= 4
    differing = [name for name in outputs[0] if outputs[0][name] != outputs[1][name]]
    assert differing == []


def test_trainer_args_reach_the_trainer_and_the_knobs_it_owns_are_refused_by_name(tmp_path):
    from functools import partial

    from shopflow.training.hf_trainer import trainer_arguments
    from shopflow.training.runtime import Runtime

    params = tiny_params(
        "+pretrain.trainer_args.lr_scheduler_type=cosine",
        "+pretrain.trainer_args.gradient_accumulation_steps=2",
    )
    cfg = params.pretrain
    arguments_with = partial(
        trainer_arguments,
        "pretrain",
        cfg,
        tmp_path,
        Runtime(torch.device("cpu"), 0, 1),
        seed=1,
        batch_size=16,
        eval_batch_size=16,
    )
    arguments = arguments_with(extra=cfg.trainer_args)
    assert arguments.lr_scheduler_type == "cosine" and arguments.gradient_accumulation_steps == 2
    assert arguments.per_device_train_batch_size == 8  # one global batch of 16 over 2 passes
    assert arguments.learning_rate == cfg.lr and arguments.max_steps == cfg.steps
    assert not arguments.bf16 and arguments.use_cpu
    for key, message in (
        ("learning_rate", r"pretrain\.trainer_args\.learning_rate: set by the project \(lr\)"),
        ("no_such_argument", r"trainer_args\.no_such_argument: not an argument of Training"),
    ):
        with pytest.raises(ConfigError, match=message):
            arguments_with(extra={key: 1})


def test_whole_word_masking_masks_every_piece_of_a_word_and_trains(in_tmp):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("tiny-random-bert"))
    cfg = tiny_params("pretrain.whole_word_mask=true", "pretrain.mask_prob=0.5").pretrain
    lines = ["unbelievably comfortable settee"] * 30
    data = masked_lm.TokenizedLines(lines, tokenizer, 16, offsets=True, seed=3)
    masked = masked_lm.fixed_masks(data, masked_lm.MaskingCollator(tokenizer, cfg))
    encoded = tokenizer(lines[0])
    words = encoded.word_ids()
    for row in masked:
        for word in {w for w in words if w is not None}:
            pieces = [row["labels"][i] != -100 for i, w in enumerate(words) if w == word]
            assert all(pieces) or not any(pieces), "a word was masked in part"
    write_corpus(in_tmp)
    result = pretrain.run(tiny_params("pretrain.whole_word_mask=true", "pretrain.steps=20"))
    assert result["heldout_loss_after"] < result["heldout_loss_before"]
