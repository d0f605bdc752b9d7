"""`python -m tools.bench <what>`: which benchmark runs, imported only when asked for."""

from __future__ import annotations

import argparse
from pathlib import Path

from shopflow.core.config import Params

BENCHES = (
    "ingest",
    "simulate",
    "train",
    "serve",
    "hostile",
    "online",
    "logging",
    "drift",
    "dag-parse",
    "gpu",
    "privacy",
)


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    """The benchmarks' arguments."""
    cmd.add_argument("what", choices=BENCHES, help="which one")
    cmd.add_argument(
        "--seconds", type=float, default=None, help="serve: per cell (20); hostile: load (60)"
    )
    cmd.add_argument(
        "--concurrency",
        type=int,
        nargs="*",
        default=[1, 8, 32],
        help="serve: concurrent clients; hostile: the first is the load's (64)",
    )
    cmd.add_argument("--profiles", nargs="*", help="train: profiles to measure")
    cmd.add_argument("--steps", type=int, default=10, help="train: timed steps")
    cmd.add_argument("--events", type=int, default=1_000_000, help="events in the day")
    cmd.add_argument("--workdir", type=Path, default=None, help="scratch; privacy: the project")


def run(params: Params, what: str, options: argparse.Namespace) -> None:
    """`python -m tools.bench <what>`: import only the benchmark asked for (torch loads slowly)."""
    if what == "serve":
        from tools.bench.serve import serve_throughput

        serve_throughput(params, tuple(options.concurrency), seconds=options.seconds or 20.0)
    elif what == "hostile":
        from tools.bench.hostile import hostile_bench

        clients = options.concurrency[0] if options.concurrency != [1, 8, 32] else 64
        hostile_bench(params, clients=clients, seconds=options.seconds or 60.0)
    elif what == "online":
        from tools.bench.online import online_bench

        online_bench(params)
    elif what == "logging":
        from tools.bench.logging_cost import logging_cost

        logging_cost(params, seconds=options.seconds or 20.0)
    elif what == "dag-parse":
        from tools.bench.dag_parse import dag_parse

        dag_parse()
    elif what == "drift":
        from tools.bench.drift import drift_sensitivity

        drift_sensitivity(params)
    elif what == "simulate":
        from tools.bench.data import simulate_throughput

        simulate_throughput(params)
    elif what == "gpu":
        from tools.bench.gpu_check import RESULT, gpu_check

        gpu_check(None, RESULT, params_path=options.params)
    elif what == "privacy":
        from tools.bench.privacy import privacy_cost

        privacy_cost(options.workdir or Path.cwd())
    elif what == "train":
        import torch

        from tools.bench.train import train_throughput

        default = ["tiny", "default", "gpu"] if torch.cuda.is_available() else ["tiny", "default"]
        train_throughput(params, options.profiles or default, steps=options.steps)
    else:
        from tools.bench.data import ingest_throughput

        ingest_throughput(params, events=options.events, workdir=options.workdir)
