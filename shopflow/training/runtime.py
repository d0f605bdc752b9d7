"""What every training stage shares around its trainer: the device and process group, and
the checkpoint folder keyed by the run's inputs.

- Device: CUDA when present (TF32 matmuls; the trainers add bf16 and fused AdamW), else CPU.
- DDP: launched by `torchrun`, every process joins the group before the trainer starts (gloo
  on CPU, NCCL on GPU), and leaves it even when the stage fails; only rank 0 writes.
- Checkpoints: `.checkpoints/<stage>/<key>`, the key made of everything the result depends
  on, this package's code included, so a checkpoint of other data, params or code is never
  resumed; the trainers write and resume their own checkpoints inside it
  (`hf_trainer.fit_with_trainer`), and the folder goes once the stage's output is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist

from shopflow.core import paths
from shopflow.models.device import autocast

log = logging.getLogger(__name__)


class Knobs(Protocol):
    """What a trainer's arguments read of a model's params section (`hf_trainer`)."""

    @property
    def steps(self) -> int: ...
    @property
    def lr(self) -> float: ...
    @property
    def weight_decay(self) -> float: ...
    @property
    def warmup_steps(self) -> int: ...
    @property
    def checkpoint_every(self) -> int: ...
    @property
    def compile(self) -> bool: ...


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device)


def setup_runtime(device: str = "auto") -> Runtime:
    """Pick the device and join the process group when launched by torchrun."""
    use_cuda = torch.cuda.is_available() and device in {"auto", "cuda"}
    if device == "cuda" and not torch.cuda.is_available():
        log.warning("models.device=cuda but no CUDA device is visible: training on CPU")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one log per run, not one per process
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if rank == 0:
        log.info(
            "runtime: %s, world size %d%s",
            dev,
            world_size,
            ", bf16 autocast + TF32" if use_cuda else "",
        )
    return Runtime(dev, rank, world_size)


def teardown(runtime: Runtime) -> None:
    if runtime.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def stage_runtime(device: str = "auto") -> Iterator[Runtime]:
    """The runtime for one stage: the process group is left even when the stage fails, so a
    torchrun job never hangs on a rank that raised."""
    runtime = setup_runtime(device)
    try:
        yield runtime
    finally:
        teardown(runtime)


def run_key(**inputs: object) -> str:
    """A checkpoint key from everything the result depends on, this package's code included
    (a checkpoint written by other code is never resumed)."""
    from shopflow.core.artifacts import files_hash

    code = files_hash(Path(__file__).parents[1], "**/*.py")
    text = json.dumps({**inputs, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Checkpoints:
    """A run's checkpoint folder (`.checkpoints/<stage>/<key>`), removed by rank 0 only."""

    def __init__(self, stage: str, key: str, runtime: Runtime) -> None:
        self.folder = paths.CHECKPOINTS / stage / key
        self.runtime = runtime

    def clear(self) -> None:
        if self.runtime.is_main:
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class Fitted:
    """What a finished `fit` reports; `done()` removes its checkpoints once outputs are safe."""

    history: list[tuple[int, float]]
    valid_history: list[tuple[int, float]]
    resumed_from: int
    steps_run: int
    seconds: float
    checkpoints: Checkpoints
    tokens: int  # training tokens of all ranks in this run

    def done(self) -> None:
        self.checkpoints.clear()
