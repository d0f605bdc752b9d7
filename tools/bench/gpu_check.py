"""The prepared GPU check: what one GPU does with shopflow's models, in a few minutes, as one JSON.

On a CUDA device it measures, with the `gpu` profile's shapes and bf16 autocast:

- the chip's own bf16 matmul rate (8192³ products): the peak MFU is reported against, beside
  the vendor's datasheet figure;
- training: optimizer steps of each model through its stage's own trainer (pretrain-adapt:
  `transformers.Trainer`, the retriever: `SentenceTransformerTrainer`, the reranker:
  `CrossEncoderTrainer`; their arguments: bf16, TF32, fused AdamW, compile), on batches of
  the profile's sizes: samples/s, tokens/s, TFLOP/s, MFU, peak memory;
- embedding: `--texts` product titles (1M by default) through the item tower, tokenising
  included: texts/s;
- scoring: the service's reranker scorer (`CrossEncoder.score_tokens`) at batches of 256 and
  1,024 (query, product) pairs: pairs/s and p95 latency per batch.

The models are all-MiniLM-L6-v2's architecture and tokenizer with random weights: speed does
not depend on the weights, and the 90 MB of them need not travel to a machine that has no
network (`make gpu-check-bundle` writes the config and tokenizer to `.gpu-check/`). On a CPU
the same code runs the `tiny` profile's shapes on the tiny random BERT in seconds, which is
how the tests keep the check working on machines without a GPU.

`make gpu-check` runs it here; `make gpu-check-device` runs it on a lent GPU machine (see
docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shopflow.core import paths
from shopflow.core.config import Params, load_params
from shopflow.core.progress import Progress
from shopflow.data.synthetic import vocabulary as voc
from shopflow.models.bi_encoder import BiEncoder, TextEncoder
from shopflow.models.cross_encoder import CrossEncoder, CrossEncoderModule, PairTokens
from shopflow.training.runtime import Runtime, setup_runtime
from tools.bench.train import bf16_peak

log = logging.getLogger(__name__)

RESULT = paths.metrics("gpu_check")
SCORER_BATCHES = (256, 1024)


def measured_peak(runtime: Runtime, seconds: float = 2.0) -> dict[str, Any]:
    """The matmul rate this device reaches: bf16 8192³ on a GPU, fp32 1024³ on a CPU."""
    n, dtype = (8192, torch.bfloat16) if runtime.cuda else (1024, torch.float32)
    a = torch.randn(n, n, device=runtime.device, dtype=dtype)
    b = torch.randn(n, n, device=runtime.device, dtype=dtype)
    for _ in range(3):  # warm-up: clocks, kernels, allocator
        a @ b
    sync(runtime)
    started, products = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        a @ b
        products += 1
        if products % 10 == 0:
            sync(runtime)
    sync(runtime)
    tflops = 2 * n**3 * products / (time.perf_counter() - started) / 1e12
    return {
        "matmul": f"{n}x{n}x{n} {str(dtype).removeprefix('torch.')}",
        "tflops": round(tflops, 1),
    }


def sync(runtime: Runtime) -> None:
    if runtime.cuda:
        torch.cuda.synchronize()


def models(folder: Path, runtime: Runtime) -> tuple[TextEncoder, CrossEncoderModule, Any]:
    """The two towers' encoder and the cross-encoder, random weights, from a config folder."""
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    config = AutoConfig.from_pretrained(str(folder), num_labels=1)
    torch.manual_seed(0)
    encoder = TextEncoder(AutoModel.from_config(config)).to(runtime.device)
    cross = CrossEncoderModule(AutoModelForSequenceClassification.from_config(config), 20.0)
    return encoder, cross.to(runtime.device), AutoTokenizer.from_pretrained(str(folder))


def trainer_steps(name: str, measure: Callable[[], dict]) -> dict:
    """One model's training figures through its stage's trainer (`measure`); where that
    trainer cannot run (a GPU machine's Python without accelerate, datasets or
    sentence-transformers), the reason instead of the figures."""
    try:
        row = measure()
    except ImportError as missing:
        log.warning("training %s: not measured (%s)", name, missing)
        return {"skipped": str(missing)}
    log.info("training %s: %s", name, row)
    return row


def pretrain_steps(folder: Path, params: Params, runtime: Runtime, steps: int) -> dict:
    """pretrain-adapt's steps through its `transformers.Trainer` (`time_pretrain_steps`), the
    masked-LM model built from the config in `folder`."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    from tools.bench.train import time_pretrain_steps

    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(str(folder)))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return time_pretrain_steps(
        model.to(runtime.device), tokenizer, params, runtime, steps, max(2, steps // 5)
    )


def with_random_weights(folder: Path, scratch: str) -> str:
    """`scratch` holding the encoder of `folder`'s config with random weights and its
    tokenizer: the trainers load their models from a folder."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(str(folder))).save_pretrained(scratch)
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(scratch)
    return scratch


def retriever_steps(folder: Path, params: Params, runtime: Runtime, steps: int) -> dict:
    """The retriever's steps through its `SentenceTransformerTrainer` (`time_retriever_steps`)."""
    from tools.bench.train import time_retriever_steps

    with tempfile.TemporaryDirectory() as scratch:
        base = with_random_weights(folder, scratch)
        return time_retriever_steps(base, params, runtime, steps, max(2, steps // 5))


def reranker_steps(folder: Path, params: Params, runtime: Runtime, steps: int) -> dict:
    """The reranker's steps through its `CrossEncoderTrainer` (`time_reranker_steps`)."""
    from tools.bench.train import time_reranker_steps

    with tempfile.TemporaryDirectory() as scratch:
        base = with_random_weights(folder, scratch)
        return time_reranker_steps(base, params, runtime, steps, max(2, steps // 5))


def titles(n: int, seed: int = 0) -> list[str]:
    """`n` product titles in the synthetic shop's words: brand, colour, material, noun."""
    rng = np.random.default_rng(seed)
    nouns = [noun for top in voc.TAXONOMY for leaf in top.leaves for noun in leaf.nouns]
    colours = [base for base, _ in voc.COLOURS]
    brands = [p + s for p in voc.BRAND_PREFIXES for s in voc.BRAND_SUFFIXES]
    parts = [brands, voc.ADJECTIVES, colours, voc.MATERIALS, voc.SIZES, nouns]
    picks = [rng.integers(len(words), size=n) for words in parts]
    return [" ".join(parts[j][picks[j][i]] for j in range(len(parts))) for i in range(n)]


def embedding_rate(
    encoder: TextEncoder, tokenizer, texts: list[str], params: Params, runtime: Runtime
) -> dict:
    """Texts/s of the item tower over `texts`, tokenising included (as the catalogue is indexed)."""
    cfg = params.retriever
    bi = BiEncoder(
        encoder, tokenizer, runtime.device, cfg.max_item_len, cfg.max_query_len, cfg.eval_batch_size
    )
    bi.encode(texts[: cfg.eval_batch_size])  # warm-up
    sync(runtime)
    started = time.perf_counter()
    vectors = bi.encode(texts, progress="embedding titles")
    sync(runtime)
    seconds = time.perf_counter() - started
    return {
        "texts": len(texts),
        "dim": int(vectors.shape[1]),
        "batch_size": cfg.eval_batch_size,
        "max_len": cfg.max_item_len,
        "seconds": round(seconds, 2),
        "texts_per_s": round(len(texts) / seconds),
    }


def scoring_rate(
    cross: CrossEncoderModule,
    tokenizer,
    texts: list[str],
    params: Params,
    runtime: Runtime,
    batch: int,
    batches: int,
) -> dict:
    """Pairs/s and per-batch latency of the service's scorer at `batch` pairs per call."""
    pairs = PairTokens(tokenizer, params.reranker.max_len, params.reranker.max_query_len)
    scorer = CrossEncoder(cross, pairs, runtime.device, batch_size=batch)
    queries = pairs.pieces([" ".join(t.split()[-2:]) for t in texts[:batches]])
    products = pairs.pieces([texts[i % len(texts)] for i in range(batch)])
    priors = np.zeros(batch, np.float32)
    latencies = []
    meter = Progress(f"scoring at batch {batch}", batches + 2, unit="batches")
    for i in range(batches + 2):  # the first two warm up
        sync(runtime)
        started = time.perf_counter()
        scorer.score_tokens([queries[i % len(queries)]] * batch, products, priors)
        sync(runtime)
        if i >= 2:
            latencies.append(time.perf_counter() - started)
        meter.update(i + 1)
    ms = np.asarray(latencies) * 1000
    return {
        "batch": batch,
        "batches": batches,
        "max_len": params.reranker.max_len,
        "pairs_per_s": round(batch * len(ms) / (ms.sum() / 1000)),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
    }


TRAINERS = {"pretrain": pretrain_steps, "retriever": retriever_steps, "reranker": reranker_steps}


def gpu_check(
    model_dir: Path | None,
    out: Path,
    texts: int | None = None,
    steps: int | None = None,
    params_path: Path = paths.PARAMS,
) -> dict:
    """Every measurement above, written to `out` (JSON); sizes follow the device."""
    started = time.perf_counter()
    runtime = setup_runtime("auto")
    profile = "gpu" if runtime.cuda else "tiny"
    params = load_params(params_path, [f"profile={profile}"])
    if model_dir is None:
        from shopflow.models.base import resolve_base_model

        model_dir = Path(resolve_base_model(params.models.base, params.models.allow_download))
    n_texts = texts or (1_000_000 if runtime.cuda else 2_000)
    n_steps = steps or (30 if runtime.cuda else 3)
    log.info(
        "gpu check on %s: profile %s, %d texts, %d steps", runtime.device, profile, n_texts, n_steps
    )
    result: dict[str, Any] = {
        "device": str(runtime.device),
        "gpu": torch.cuda.get_device_name() if runtime.cuda else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "profile": profile,
        "model": "all-MiniLM-L6-v2 architecture, random weights"
        if runtime.cuda
        else str(model_dir),
    }
    peak = measured_peak(runtime)
    datasheet = bf16_peak(result["gpu"]) if runtime.cuda else None
    result["peak"] = {**peak, "datasheet_bf16_tflops": datasheet / 1e12 if datasheet else None}
    log.info("peak: %s", result["peak"])
    encoder, cross, tokenizer = models(model_dir, runtime)
    trained = (model_dir, params, runtime, n_steps)
    result["training"] = [
        {"model": name, **trainer_steps(name, partial(measure, *trained))}
        for name, measure in TRAINERS.items()
    ]
    for row in result["training"]:
        if row.get("tflops") is not None:
            row["mfu_measured_peak"] = round(row["tflops"] / peak["tflops"], 4)
    corpus = titles(n_texts)
    result["embedding"] = embedding_rate(encoder, tokenizer, corpus, params, runtime)
    log.info("embedding: %s", result["embedding"])
    batches = 50 if runtime.cuda else 3
    result["scoring"] = [
        scoring_rate(cross, tokenizer, corpus, params, runtime, b, batches) for b in SCORER_BATCHES
    ]
    log.info("scoring: %s", result["scoring"])
    if runtime.cuda:
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    result["seconds"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    log.info("gpu check written to %s in %.0f s", out, result["seconds"])
    return result


def main(argv: list[str] | None = None) -> int:
    """`python -m tools.bench.gpu_check`: what runs on a lent GPU machine, where the package
    is not installed (its pins are not that machine's) but its source is on PYTHONPATH."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, default=None, help="a config + tokenizer folder")
    parser.add_argument("--out", type=Path, default=RESULT, help="the JSON written")
    parser.add_argument("--texts", type=int, default=None, help="titles embedded")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per model")
    parser.add_argument("--params", type=Path, default=paths.PARAMS, help="params file")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    gpu_check(args.model, args.out, args.texts, args.steps, args.params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
