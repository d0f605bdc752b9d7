"""Training speed (`make bench-train`): samples/s and tokens/s of each model at each profile's
batch shape, and on a GPU the model FLOPs utilisation (MFU) against the chip's bf16 peak.
Writes `metrics/bench_train.json`."""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from shopflow.core import paths
from shopflow.core.config import Params

log = logging.getLogger(__name__)

TRAIN_RESULT = paths.metrics("bench_train")
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched on device name.
BF16_PEAK = {
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
}


def bf16_peak(name: str) -> float | None:
    for key, peak in BF16_PEAK.items():  # most specific first
        if key in name:
            return peak
    return None


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters that do matmul work per token (embedding lookups are not FLOPs)."""
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def step_figures(
    model: torch.nn.Module, runtime, samples: int, tokens: float, seconds: float, compiled: bool
) -> dict:
    """One timed step's figures: samples/s, tokens/s and, on a GPU, TFLOP/s, MFU against the
    datasheet peak and peak memory."""
    row: dict = {
        "samples_per_step": samples,
        "tokens_per_step": round(tokens),
        "compiled": compiled,
        "samples_per_s": round(samples / seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "non_embedding_params": non_embedding_params(model),
    }
    if runtime.cuda:
        name = torch.cuda.get_device_name()
        peak = bf16_peak(name)
        flops = 6 * row["non_embedding_params"] * tokens / seconds
        row["gpu"] = name
        row["tflops"] = round(flops / 1e12, 1)
        row["mfu"] = round(flops / peak, 4) if peak else None
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def time_trainer_steps(trainer, runtime, steps: int, warmup: int) -> tuple[float, float]:
    """Train `trainer` (built for `warmup + steps` steps); seconds and tokens per step of the
    steps after `warmup` (the first steps compile, warm caches and allocate)."""
    from transformers import TrainerCallback

    from shopflow.training.hf_trainer import quiet

    class Clock(TrainerCallback):
        started, tokens = 0.0, 0

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                if runtime.cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                self.started, self.tokens = time.perf_counter(), state.num_input_tokens_seen

    clock = Clock()
    quiet(trainer).add_callback(clock)
    trainer.train()
    if runtime.cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - clock.started) / steps
    return seconds, (trainer.state.num_input_tokens_seen - clock.tokens) / steps


def random_lines(tokenizer, width: int, count: int, seed: int = 0) -> list[str]:
    """`count` distinct lines of random vocabulary pieces, each at least `width` tokens long."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, len(tokenizer), (count * 7 + width,), generator=generator).tolist()
    words = tokenizer.convert_ids_to_tokens(ids)  # at least a token a word
    return [" ".join(words[i : i + width]) for i in range(0, count * 7, 7)]


def time_pretrain_steps(
    model: torch.nn.Module, tokenizer, profile: Params, runtime, steps: int, warmup: int
) -> dict:
    """Optimizer steps of pretrain-adapt through the stage's own `transformers.Trainer`
    (arguments, masking collator, length-grouped sampler, clipping, schedule, bf16 and
    compile on CUDA) on full-length random lines of the profile's shape: the figures of
    `step_figures` for the steps after `warmup`."""
    from shopflow.training.hf_trainer import trainer_arguments, trainer_class
    from shopflow.training.masked_lm import MaskingCollator, TokenizedLines

    cfg = profile.pretrain
    width = cfg.max_seq_len
    lines = random_lines(tokenizer, width, 700)
    data = TokenizedLines(lines, tokenizer, width, cfg.whole_word_mask, 0)
    knobs = cfg.model_copy(update={"steps": warmup + steps, "checkpoint_every": 0})
    with tempfile.TemporaryDirectory() as folder:
        arguments = trainer_arguments(
            "pretrain",
            knobs,
            Path(folder),
            runtime,
            seed=0,
            batch_size=cfg.batch_size,
            eval_batch_size=cfg.batch_size,
            group_by_length=cfg.group_by_length,
            extra={**cfg.trainer_args, "eval_strategy": "no"},
        )
        trainer = trainer_class()(
            model=model,
            args=arguments,
            data_collator=MaskingCollator(tokenizer, cfg),
            train_dataset=data,
            processing_class=tokenizer,
        )
        seconds, tokens = time_trainer_steps(trainer, runtime, steps, warmup)
    row = step_figures(model, runtime, cfg.batch_size, tokens, seconds, arguments.torch_compile)
    return {**row, "trainer": "transformers.Trainer"}


def time_retriever_steps(base: str, profile: Params, runtime, steps: int, warmup: int) -> dict:
    """Optimizer steps of the retriever through the stage's own `SentenceTransformerTrainer`
    (`sentence_trainer.retriever_trainer`: no-duplicates sampler, tokenisation per tower,
    InfoNCE, clipping, schedule, bf16 and compile on CUDA) on triplets of full-length random
    texts of the profile's shapes."""
    from datasets import Dataset

    from shopflow.training.sentence_trainer import retriever_trainer, sentence_model

    cfg = profile.retriever
    model = sentence_model(Path(base), runtime)
    rows = cfg.batch_size * (warmup + steps)
    queries = random_lines(model.tokenizer, cfg.max_query_len, rows, seed=1)
    items = random_lines(model.tokenizer, cfg.max_item_len, 2 * rows, seed=2)
    columns = {"anchor": queries, "positive": items[:rows], "negative": items[rows:]}
    data = Dataset.from_dict(columns)
    knobs = cfg.model_copy(update={"steps": warmup + steps, "checkpoint_every": 0})
    with tempfile.TemporaryDirectory() as folder:
        trainer = retriever_trainer(
            model, knobs, Path(folder), runtime, seed=0, train=data, valid=None
        )
        seconds, tokens = time_trainer_steps(trainer, runtime, steps, warmup)
    compiled = bool(trainer.args.torch_compile)
    row = step_figures(model, runtime, cfg.batch_size, tokens, seconds, compiled)
    return {**row, "trainer": "SentenceTransformerTrainer"}


def time_reranker_steps(base: str, profile: Params, runtime, steps: int, warmup: int) -> dict:
    """Optimizer steps of the reranker through the stage's own `CrossEncoderTrainer`
    (`cross_encoder_trainer.reranker_trainer`: groups in step order, pairs joined as the
    service joins them, the retriever prior, the listwise loss, the head's own rate) on groups
    of full-length random texts of the profile's shapes."""
    import numpy as np
    from transformers import AutoTokenizer

    from shopflow.models.cross_encoder import CrossEncoderModule, PairTokens
    from shopflow.training.cross_encoder_trainer import (
        ListwiseLoss,
        groups_dataset,
        reranker_model,
        reranker_trainer,
    )

    cfg = profile.reranker
    module = CrossEncoderModule.from_pretrained(base, 20.0).to(runtime.device)
    tokenizer = AutoTokenizer.from_pretrained(base)
    pairs = PairTokens(tokenizer, cfg.max_len, cfg.max_query_len)
    size, count = cfg.group_size, cfg.groups_per_step * (warmup + steps)
    queries = random_lines(tokenizer, cfg.max_query_len, count, seed=1)
    products = pairs.pieces(random_lines(tokenizer, cfg.max_len, count * size, seed=2))
    rng = np.random.default_rng(0)
    loss = ListwiseLoss(
        reranker_model(module, Path(base), runtime),
        pairs,
        dict(zip(queries, pairs.pieces(queries), strict=True)),
        products,
        {query: rng.normal(size=8) for query in queries},
        rng.normal(size=(len(products), 8)),
    )
    groups = [
        (q, np.arange(i * size, (i + 1) * size), rng.random(size)) for i, q in enumerate(queries)
    ]
    knobs = cfg.model_copy(update={"steps": warmup + steps, "checkpoint_every": 0})
    with tempfile.TemporaryDirectory() as folder:
        trainer = reranker_trainer(
            loss,
            module.head_parameters(),
            knobs,
            Path(folder),
            runtime,
            seed=0,
            train=groups_dataset(groups),
            valid=None,
        )
        seconds, tokens = time_trainer_steps(trainer, runtime, steps, warmup)
    compiled = bool(trainer.args.torch_compile)
    row = step_figures(module, runtime, cfg.groups_per_step * size, tokens, seconds, compiled)
    return {**row, "trainer": "CrossEncoderTrainer"}


def train_throughput(params: Params, profiles: list[str], steps: int = 10, warmup: int = 3) -> list:
    """Optimizer steps/s of each model at each profile's batch shape, on this machine's device.

    Reports samples/s, tokens/s and, on a GPU with a known bf16 peak, the model FLOPs
    utilisation: 6 × non-embedding params × tokens / time ÷ peak (forward + backward; attention
    FLOPs are left out, so MFU is slightly understated at long sequence lengths).
    """
    from shopflow.core.config import load_params
    from shopflow.models.base import resolve_base_model
    from shopflow.training.masked_lm import load_mlm
    from shopflow.training.runtime import setup_runtime

    rows = []
    runtime = setup_runtime(params.models.device)
    for profile_name in profiles:
        profile = load_params(paths.PARAMS, [f"profile={profile_name}"])
        base = resolve_base_model(profile.models.base, profile.models.allow_download)
        for model_name in ("pretrain", "retriever", "reranker"):
            if model_name == "pretrain":
                tokenizer, mlm = load_mlm(base)
                timed = time_pretrain_steps(mlm, tokenizer, profile, runtime, steps, warmup)
            elif model_name == "retriever":
                timed = time_retriever_steps(base, profile, runtime, steps, warmup)
            else:
                timed = time_reranker_steps(base, profile, runtime, steps, warmup)
            row = {
                "profile": profile_name,
                "model": model_name,
                "device": str(runtime.device),
                **timed,
            }
            rows.append(row)
            log.info("bench train: %s", row)
    TRAIN_RESULT.parent.mkdir(parents=True, exist_ok=True)
    TRAIN_RESULT.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{'profile':<9}{'model':<11}{'device':<8}{'samples/s':>11}{'tokens/s':>11}{'MFU':>8}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        print(
            f"{r['profile']:<9}{r['model']:<11}{r['device']:<8}{r['samples_per_s']:>11,.1f}"
            f"{r['tokens_per_s']:>11,}{mfu:>8}"
        )
    print(f"  written to {TRAIN_RESULT}")
    return rows
