"""The training loop of the fine-tuning stages (retriever, reranker), and the device and
checkpoint folder every stage shares (pretrain-adapt trains on `transformers.Trainer`,
`training.hf_trainer`): device, precision, optimizer, checkpoints that make a killed run
resume to the same result, and DDP.

- Device: CUDA when present (bf16 autocast, TF32 matmuls, fused AdamW), else CPU in fp32.
- Determinism: the data order of every epoch is drawn from a generator seeded by (seed,
  epoch), never from global RNG state, and the global RNG (dropout) is re-seeded every step,
  so a run resumed from step k continues exactly as the uninterrupted run would.
- Checkpoints: every `checkpoint_every` steps the model, optimizer and scheduler state are
  written atomically under a key made of the run's inputs; a checkpoint of other data or other
  params is never resumed. They are removed once the stage's output is written.
- DDP: launched by `torchrun`, each rank takes its slice of every global batch (gloo on CPU,
  NCCL on GPU); only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import torch
import torch.distributed as dist

from shopflow.core import paths
from shopflow.core.progress import Progress
from shopflow.models.device import autocast

log = logging.getLogger(__name__)


class Knobs(Protocol):
    """What the loop reads of a model's params section (pretrain, retriever, reranker)."""

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


def wrap_ddp(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    if runtime.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[runtime.device.index] if runtime.cuda else None
    )


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (the model itself when not wrapped)."""
    inner = getattr(model, "module", model)
    assert isinstance(inner, torch.nn.Module)
    return inner


Head = tuple[list[torch.nn.Parameter], float]  # parameters that start untrained, their lr


def make_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    runtime: Runtime,
    head: Head | None = None,
):
    """AdamW without decay on biases and norms; `head`'s parameters (a freshly initialised
    head on a pretrained body) at their own learning rate, so that they catch up within the
    steps the body needs only to adapt."""
    fast = {id(p) for p in head[0]} if head else set()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decays = not (param.ndim < 2 or "LayerNorm" in name)
            groups.setdefault((id(param) in fast, decays), []).append(param)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": weight_decay if decays else 0.0,
                "lr": head[1] if is_head and head else lr,
            }
            for (is_head, decays), params in sorted(groups.items())
        ],
        lr=lr,
        fused=runtime.cuda,
    )


def linear_schedule(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        return max(0.0, (total - step) / max(total - warmup, 1))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_order(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices of the global batch for `step`, from an epoch permutation seeded by (seed, epoch)."""
    per_epoch = max(n // batch_size, 1)
    epoch, offset = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=generator)
    chunk = perm[offset * batch_size : (offset + 1) * batch_size]
    return chunk if len(chunk) else perm[:batch_size]


def shard(indices: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    return indices[runtime.rank :: runtime.world_size]


def run_key(**inputs: object) -> str:
    """A checkpoint key from everything the result depends on, this package's code included
    (a checkpoint written by other code is never resumed)."""
    from shopflow.core.artifacts import files_hash

    code = files_hash(Path(__file__).parents[1], "**/*.py")
    text = json.dumps({**inputs, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Checkpoints:
    def __init__(self, stage: str, key: str, every: int, runtime: Runtime) -> None:
        self.folder = paths.CHECKPOINTS / stage / key
        self.every = every
        self.runtime = runtime

    def latest(self) -> Path | None:
        path = self.folder / "latest.pt"
        return path if path.exists() else None

    def due(self, step: int) -> bool:
        """Whether `step` is a checkpoint step (validation runs at the same steps)."""
        return self.every > 0 and step % self.every == 0

    def save(self, step: int, model, optimizer, scheduler, extra: dict | None = None) -> None:
        if not self.runtime.is_main or not self.due(step):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {
            "step": step,
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "extra": extra or {},
        }
        tmp = self.folder / "latest.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.folder / "latest.pt")
        log.info("checkpoint at step %d -> %s", step, self.folder)

    def restore(self, model, optimizer, scheduler) -> tuple[int, dict]:
        path = self.latest()
        if path is None:
            return 0, {}
        state = torch.load(
            path, map_location=self.runtime.device, weights_only=True
        )  # no pickled code
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        log.info("resuming from the checkpoint at step %d (%s)", state["step"], path)
        return int(state["step"]), state["extra"]

    def clear(self) -> None:
        if self.runtime.is_main:
            shutil.rmtree(self.folder, ignore_errors=True)


def train_steps(
    *,
    total_steps: int,
    start_step: int,
    loss_of_step: Callable[[int], torch.Tensor],
    model: torch.nn.Module,
    optimizer,
    scheduler,
    checkpoints: Checkpoints,
    progress: Progress,
    seed: int,
    history: list[tuple[int, float]],
    valid_history: list[tuple[int, float]],
    validate: Callable[[], float] | None = None,
    max_grad_norm: float = 1.0,
    private: bool = False,
) -> Iterator[int]:
    """Run optimisation steps [start_step, total_steps); yields each finished step number.

    Each step's loss is appended to `history`, and `validate()` (a held-out loss) to
    `valid_history` at every checkpoint step and at the last step; both travel inside the
    checkpoints, so a resumed run reports the whole learning curve.

    The global RNG (dropout) is re-seeded from (seed, step) before every step, so a resumed
    run draws the same dropout masks as an uninterrupted one.

    `private`: `loss_of_step` has set the gradients itself (clipped per customer and noised,
    `training.privacy`); the step only applies them.
    """
    model.train()
    for step in range(start_step, total_steps):
        torch.manual_seed(seed * 104_729 + step)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of_step(step)
        if not private:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        history.append((step + 1, value))
        if validate is not None and (checkpoints.due(step + 1) or step + 1 == total_steps):
            valid_history.append((step + 1, validate()))
            model.train()
        progress.update(step + 1, loss=value, lr=scheduler.get_last_lr()[0])
        checkpoints.save(
            step + 1,
            model,
            optimizer,
            scheduler,
            {"history": history, "valid_history": valid_history},
        )
        yield step + 1


@dataclass
class Fitted:
    """What a finished `fit` reports; `done()` removes its checkpoints once outputs are safe."""

    history: list[tuple[int, float]]
    valid_history: list[tuple[int, float]]
    resumed_from: int
    steps_run: int
    seconds: float
    checkpoints: Checkpoints
    tokens: int | None = None  # training tokens of all ranks (None: counted by the task)
    logged_live: bool = False  # the curves went to DVCLive during training

    def done(self) -> None:
        self.checkpoints.clear()


def fit(
    *,
    stage: str,
    model: torch.nn.Module,
    runtime: Runtime,
    cfg: Knobs,
    seed: int,
    checkpoints: Checkpoints,
    loss_of_step: Callable[[torch.nn.Module, int], torch.Tensor],
    validate: Callable[[torch.nn.Module], float] | None = None,
    head: Head | None = None,
    private: bool = False,
) -> Fitted:
    """Train `model` for `cfg.steps` steps, resuming from this run's last checkpoint if any.

    `cfg` carries steps, lr, weight_decay, warmup_steps, checkpoint_every and compile;
    `loss_of_step(forward, step)` computes one global step's loss on this rank's shard with
    `forward` (the model wrapped for DDP and, on CUDA with `compile`, torch.compile).
    `validate(model)` computes a held-out loss (no gradients; every rank computes the same):
    before the first step, at every checkpoint step and after the last. `head`: parameters
    trained at a learning rate of their own (see `make_optimizer`). `private`: see
    `train_steps`.
    """
    ddp_model = wrap_ddp(model, runtime)
    forward = ddp_model
    if cfg.compile and runtime.cuda:
        forward = cast(torch.nn.Module, torch.compile(ddp_model))
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, runtime, head)
    scheduler = linear_schedule(optimizer, cfg.warmup_steps, cfg.steps)
    start, extra = checkpoints.restore(model, optimizer, scheduler)
    history = [(int(s), float(v)) for s, v in extra.get("history", [])]
    valid_history = [(int(s), float(v)) for s, v in extra.get("valid_history", [])]
    validating = 0.0  # seconds: left out of the training throughput

    def check() -> float:
        nonlocal validating
        assert validate is not None
        began = time.perf_counter()
        value = float(validate(model))
        validating += time.perf_counter() - began
        return value

    if validate is not None and start == 0:
        valid_history.append((0, check()))
    validating = 0.0
    started = time.perf_counter()
    for _ in train_steps(
        total_steps=cfg.steps,
        start_step=start,
        loss_of_step=lambda step: loss_of_step(forward, step),
        model=ddp_model,
        optimizer=optimizer,
        scheduler=scheduler,
        checkpoints=checkpoints,
        progress=Progress(stage, cfg.steps, start=start),
        seed=seed,
        history=history,
        validate=check if validate is not None else None,
        valid_history=valid_history,
        private=private,
    ):
        pass
    seconds = time.perf_counter() - started - validating
    return Fitted(history, valid_history, start, cfg.steps - start, seconds, checkpoints)
