"""Benchmarks behind the speed claims (`make bench`). Timings go to stdout and a JSON file.

`ingest_throughput`: one synthetic day of about N events (default 1M) through the real
ingest (parse, window, pseudonymize, scrub, hash, parquet) and validate (every GX suite)
code paths, timed separately from the simulator that produces the day.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch

from pipelines import ingest, validate
from pipelines.config import Params
from pipelines.privacy import pseudonym_key
from pipelines.sources import read_source
from pipelines.synthetic.sessions import WEEKDAY_FACTOR

log = logging.getLogger(__name__)

EVENTS_PER_SESSION = 19.4  # measured on the default profile: 1,085,539 events / 55,980 sessions
RESULT = Path("metrics/bench_ingest.json")
SIMULATE_RESULT = Path("metrics/bench_simulate.json")


def simulate_throughput(params: Params, days: int = 30, sessions: int = 5000) -> dict:
    """Wall time of the synthetic shop for `days` × `sessions` (the issue's "in seconds" goal)."""
    from pipelines.synthetic import generate

    cfg = params.synthetic.model_copy(update={"sessions_per_day": sessions})
    window = [params.ingest.window.end - dt.timedelta(days=d) for d in reversed(range(days))]
    started = time.perf_counter()
    tables = generate(cfg, params.seed, window)
    seconds = time.perf_counter() - started
    report = {
        "days": days,
        "sessions_per_day": sessions,
        "events": len(tables.events),
        "judgments": len(tables.judgments),
        "seconds": round(seconds, 2),
        "events_per_s": round(len(tables.events) / seconds),
    }
    SIMULATE_RESULT.parent.mkdir(parents=True, exist_ok=True)
    SIMULATE_RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nsynthetic shop: {days} days x {sessions:,} sessions -> {report['events']:,} events "
        f"in {seconds:.1f} s ({report['events_per_s']:,} events/s); written to {SIMULATE_RESULT}"
    )
    return report


def ingest_throughput(params: Params, events: int, workdir: Path | None = None) -> dict:
    day = params.ingest.window.end
    sessions = max(1, round(events / EVENTS_PER_SESSION / WEEKDAY_FACTOR[day.weekday()]))
    overrides = {
        "ingest": params.ingest.model_copy(
            update={"window": params.ingest.window.model_copy(update={"days": 1})}
        ),
        "synthetic": params.synthetic.model_copy(
            update={
                "sessions_per_day": sessions,
                "n_users": max(params.synthetic.n_users, sessions // 2),
            }
        ),
    }
    bench = params.model_copy(update=overrides)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="shopflow-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        raw = read_source(bench)
        t1 = time.perf_counter()
        result = ingest.normalize(raw, bench, pseudonym_key(), dt.datetime.now(dt.UTC))
        ingest.write(result, root / "ingested")
        t2 = time.perf_counter()
        validate.run(
            bench, root / "ingested", root / "validated", root / "reports", root / "v.json"
        )
        t3 = time.perf_counter()
    rows = sum(len(f) for f in result.tables.values())
    n_events = len(result.tables["events"])
    report = {
        "day": str(day),
        "events": n_events,
        "rows_all_tables": rows,
        "simulate_s": round(t1 - t0, 2),
        "ingest_s": round(t2 - t1, 2),
        "validate_s": round(t3 - t2, 2),
        "ingest_rows_per_s": round(rows / (t2 - t1)),
        "validate_rows_per_s": round(rows / (t3 - t2)),
        "ingest_plus_validate_rows_per_s": round(rows / (t3 - t1)),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        ("simulate", report["simulate_s"], "(not part of ingest)"),
        ("ingest", report["ingest_s"], f"{report['ingest_rows_per_s']:>10,} rows/s"),
        ("validate (GX)", report["validate_s"], f"{report['validate_rows_per_s']:>10,} rows/s"),
        ("ingest + validate", t3 - t1, f"{report['ingest_plus_validate_rows_per_s']:>10,} rows/s"),
    ]
    print(f"\n1 synthetic day, {n_events:,} events ({rows:,} rows with products and judgments)")
    for name, seconds, rate in lines:
        print(f"  {name:<18}{seconds:>7.2f} s   {rate}")
    print(f"  written to {RESULT}")
    return report


TRAIN_RESULT = Path("metrics/bench_train.json")
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched on device name.
BF16_PEAK = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12,
             "L4": 121e12, "A10": 125e12}  # fmt: skip


def bf16_peak(name: str) -> float | None:
    for key, peak in BF16_PEAK.items():  # most specific first
        if key in name:
            return peak
    return None


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters that do matmul work per token (embedding lookups are not FLOPs)."""
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def _batches(profile: Params, model_name: str, vocab: int, generator: torch.Generator) -> tuple:
    """Random token batches of the shapes one training step of `model_name` sees (full length:
    an upper bound on the padding-free lengths of real data)."""

    def ids(rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randint(1000, vocab, (rows, length), generator=generator), torch.ones(
            rows, length, dtype=torch.long
        )

    if model_name == "pretrain":
        cfg = profile.pretrain
        return cfg.batch_size, [ids(cfg.batch_size, cfg.max_seq_len)]
    if model_name == "retriever":
        cfg = profile.retriever
        n = cfg.batch_size
        return n, [ids(n, cfg.max_query_len), ids(n, cfg.max_item_len), ids(n, cfg.max_item_len)]
    cfg = profile.reranker
    n = cfg.groups_per_step * cfg.group_size
    return n, [ids(n, cfg.max_len)]


def _loss(model_name: str, forward, batches) -> torch.Tensor:
    if model_name == "pretrain":
        ids, mask = batches[0]
        return forward(input_ids=ids, attention_mask=mask, labels=ids).loss
    if model_name == "retriever":
        return torch.stack([v.sum() for v in forward(*batches)]).sum()
    ids, mask = batches[0]
    return forward(ids, torch.zeros_like(ids), mask).sum()


def _load(model_name: str, base: str, runtime):
    from pipelines.cross_encoder import CrossEncoder
    from pipelines.encoding import TextEncoder
    from pipelines.pretrain import load_mlm

    if model_name == "pretrain":
        return load_mlm(base, runtime)[1]
    if model_name == "retriever":
        return TextEncoder.from_pretrained(base).to(runtime.device)
    return CrossEncoder.from_pretrained(base).to(runtime.device)


def _time_steps(model_name: str, model, profile: Params, runtime, steps: int, warmup: int) -> dict:
    from pipelines.training import make_optimizer

    cfg = getattr(profile, model_name)
    forward = torch.compile(model) if cfg.compile and runtime.cuda else model
    optimizer = make_optimizer(model, 1e-5, 0.0, runtime)
    samples, batches = _batches(profile, model_name, 30000, torch.Generator().manual_seed(0))
    batches = [(i.to(runtime.device), m.to(runtime.device)) for i, m in batches]
    tokens = sum(int(m.sum()) for _, m in batches)
    for i in range(warmup + steps):
        if i == warmup:
            if runtime.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            loss = _loss(model_name, forward, batches)
        loss.backward()
        optimizer.step()
    if runtime.cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    row = {
        "samples_per_step": samples, "tokens_per_step": tokens,
        "samples_per_s": round(samples / seconds, 1), "tokens_per_s": round(tokens / seconds),
        "non_embedding_params": non_embedding_params(model),
    }  # fmt: skip
    if runtime.cuda:
        name = torch.cuda.get_device_name()
        peak = bf16_peak(name)
        flops = 6 * row["non_embedding_params"] * tokens / seconds
        row["gpu"] = name
        row["tflops"] = round(flops / 1e12, 1)
        row["mfu"] = round(flops / peak, 4) if peak else None
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def train_throughput(params: Params, profiles: list[str], steps: int = 10, warmup: int = 3) -> list:
    """Optimizer steps/s of each model at each profile's batch shape, on this machine's device.

    Reports samples/s, tokens/s and, on a GPU with a known bf16 peak, the model FLOPs
    utilisation: 6 × non-embedding params × tokens / time ÷ peak (forward + backward; attention
    FLOPs are left out, so MFU is slightly understated at long sequence lengths).
    """
    from pipelines.config import load_params
    from pipelines.encoders import resolve_base_model
    from pipelines.training import setup_runtime

    rows = []
    runtime = setup_runtime(params.models.device)
    for profile_name in profiles:
        profile = load_params("params.yaml", [f"profile={profile_name}"])
        base = resolve_base_model(profile.models.base, profile.models.allow_download)
        for model_name in ("pretrain", "retriever", "reranker"):
            model = _load(model_name, base, runtime)
            row = {"profile": profile_name, "model": model_name, "device": str(runtime.device),
                   **_time_steps(model_name, model, profile, runtime, steps, warmup)}  # fmt: skip
            rows.append(row)
            log.info("bench train: %s", row)
    TRAIN_RESULT.parent.mkdir(parents=True, exist_ok=True)
    TRAIN_RESULT.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{'profile':<9}{'model':<11}{'device':<8}{'samples/s':>11}{'tokens/s':>11}{'MFU':>8}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        print(f"{r['profile']:<9}{r['model']:<11}{r['device']:<8}{r['samples_per_s']:>11,.1f}"
              f"{r['tokens_per_s']:>11,}{mfu:>8}")  # fmt: skip
    print(f"  written to {TRAIN_RESULT}")
    return rows
