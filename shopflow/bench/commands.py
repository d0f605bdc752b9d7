"""`shopflow bench <what>`: which benchmark runs, imported only when asked for."""

from __future__ import annotations

import argparse

from shopflow.core.config import Params


def run(params: Params, what: str, options: argparse.Namespace) -> None:
    """`shopflow bench <what>`: import only the benchmark asked for (torch is slow to load)."""
    if what == "serve":
        from shopflow.bench.serve import serve_throughput

        serve_throughput(params, tuple(options.concurrency), seconds=options.seconds or 20.0)
    elif what == "hostile":
        from shopflow.bench.hostile import hostile_bench

        clients = options.concurrency[0] if options.concurrency != [1, 8, 32] else 64
        hostile_bench(params, clients=clients, seconds=options.seconds or 60.0)
    elif what == "drift":
        from shopflow.bench.drift import drift_sensitivity

        drift_sensitivity(params)
    elif what == "simulate":
        from shopflow.bench.data import simulate_throughput

        simulate_throughput(params)
    elif what == "gpu":
        from shopflow.bench.gpu_check import RESULT, gpu_check

        gpu_check(None, RESULT, params_path=options.params)
    elif what == "train":
        import torch

        from shopflow.bench.train import train_throughput

        default = ["tiny", "default", "gpu"] if torch.cuda.is_available() else ["tiny", "default"]
        train_throughput(params, options.profiles or default, steps=options.steps)
    else:
        from shopflow.bench.data import ingest_throughput

        ingest_throughput(params, events=options.events, workdir=options.workdir)
