"""The one skeleton every training stage runs: examples → tokens → fit → evaluate → write.

A model plugs into it as a `TrainingTask`: how to build its examples and model (`setup`),
what the result depends on (the checkpoint key), how it trains (`fit`: on its library's
trainer, `hf_trainer.fit_with_trainer`), its test numbers and how to save it. `train` does
the rest, the same way for every model:

- joins the torch distributed process group when launched by `torchrun` (`runtime.stage_runtime`)
  and always leaves it, so a failed rank never hangs the others;
- gives `fit` the run's checkpoint folder, keyed by its inputs (`runtime.run_key`); the trainer
  resumes from its last checkpoint there and logs the learning curves to DVCLive as it goes;
- on rank 0 only: evaluates, replaces the output folder atomically, writes
  `metrics/<stage>.json`, adds the stage's other curves and final numbers to
  `dvclive/<stage>`, and removes the checkpoints only once all of that is written.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import torch

from shopflow.core import paths
from shopflow.core.artifacts import staged_dir, write_json, write_metrics
from shopflow.core.config import Params
from shopflow.training.runtime import (
    Checkpoints,
    Fitted,
    Knobs,
    Runtime,
    run_key,
    stage_runtime,
)

log = logging.getLogger(__name__)


class NothingToTrainError(Exception):
    """Raised by `TrainingTask.setup` when the data holds nothing this model can learn from:
    the stage then writes a marker instead of a model (serving does without it)."""


Model = TypeVar("Model", bound=torch.nn.Module)


class TrainingTask(ABC, Generic[Model]):
    """One model's part of training; see the module docstring for the part `train` plays."""

    stage: ClassVar[str]  # the dvc.yaml stage: checkpoints, metrics and curves are named by it
    curve: ClassVar[str]  # the loss's name on the learning curve (`train/<curve>`)
    output: ClassVar[Path]  # the folder the trained model replaces

    def __init__(self, params: Params) -> None:
        self.params = params

    @property
    @abstractmethod
    def knobs(self) -> Knobs:
        """The params section with steps, lr, weight_decay, warmup, checkpoints, compile."""

    @property
    @abstractmethod
    def samples_per_step(self) -> int:
        """Examples in one global step (for samples/s)."""

    @abstractmethod
    def setup(self, runtime: Runtime) -> Model:
        """Read the examples, tokenise them and build the model to train on `runtime.device`."""

    @abstractmethod
    def key(self, runtime: Runtime) -> dict[str, object]:
        """Everything the trained weights depend on: a checkpoint of other inputs is never
        resumed."""

    @abstractmethod
    def fit(self, model: Model, runtime: Runtime, checkpoints: Checkpoints) -> Fitted:
        """Train `model` on the task's trainer, resuming from the last checkpoint in
        `checkpoints.folder` if there is one."""

    @abstractmethod
    def evaluate(self, model: Model, fitted: Fitted, runtime: Runtime) -> dict:
        """On rank 0 after training: the stage's result (test numbers, training figures).
        Raising here keeps the previous output in place."""

    @abstractmethod
    def save(self, model: Model, folder: Path, result: dict) -> None:
        """Write the trained model (and anything served with it) into the empty `folder`."""

    def summary(self, result: dict) -> dict[str, float]:
        """The final numbers DVCLive records beside the curves."""
        return {}

    def extra_curves(self) -> dict[str, list[tuple[int, float]]]:
        """Curves of what the stage fits besides the network (name -> [(step, value)])."""
        return {}


def train(task: TrainingTask[Model]) -> dict:
    """Run `task` through the shared skeleton; its result on rank 0, {} on other ranks."""
    params = task.params
    with stage_runtime(params.models.device) as runtime:
        try:
            model = task.setup(runtime)
        except NothingToTrainError as nothing:
            return skip(task, str(nothing), runtime)
        key = run_key(**task.key(runtime))
        checkpoints = Checkpoints(task.stage, key, runtime)
        fitted = task.fit(model, runtime, checkpoints)
        if not runtime.is_main:
            return {}
        result = task.evaluate(model, fitted, runtime)
        stored = write_metrics(task.stage, result)  # timings apart: see write_metrics
        with staged_dir(task.output) as staging:
            task.save(model, staging, stored)
        write_curve(paths.live(task.stage), task.extra_curves(), task.summary(result), resume=True)
        fitted.done()
        return result


def skip(task: TrainingTask[Model], reason: str, runtime: Runtime) -> dict:
    """A marker in place of the model, the reason in the metrics and an empty curve."""
    log.warning("%s skipped: %s", task.stage, reason)
    result = {"skipped": reason}
    if runtime.is_main:
        with staged_dir(task.output) as staging:
            write_json(staging / "shopflow.json", {"kind": task.stage, **result})
        write_json(paths.metrics(task.stage), result)
        write_curve(paths.live(task.stage), {f"train/{task.curve}": []}, {})
    return result


def training_figures(task: TrainingTask[Model], fitted: Fitted, runtime: Runtime) -> dict:
    """Steps, resume point, final losses, device and throughput: what every stage reports."""
    seconds = fitted.seconds or float("nan")
    tokens = fitted.tokens
    return {
        "steps": task.knobs.steps,
        "resumed_from_step": fitted.resumed_from,
        "final_loss": fitted.history[-1][1],
        "valid_loss": fitted.valid_history[-1][1] if fitted.valid_history else None,
        "device": str(runtime.device),
        "world_size": runtime.world_size,
        "seconds": round(fitted.seconds, 2),
        "samples_per_s": round(fitted.steps_run * task.samples_per_step / seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def write_curve(
    live_dir: Path,
    curves: dict[str, list[tuple[int, float]]],
    summary: dict[str, float],
    resume: bool = False,
) -> None:
    """The learning curves (name -> [(step, value)], e.g. `train/loss` and `valid/loss`) and
    the final numbers through DVCLive (`dvc plots show` reads them); `resume` adds them to
    the curves already logged there (by `hf_trainer.LiveCurves` during training)."""
    from dvclive import Live

    by_step: dict[int, dict[str, float]] = {}
    for name, points in curves.items():
        for step, value in points:
            by_step.setdefault(step, {})[name] = value
    with Live(
        dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None, resume=resume
    ) as live:
        for step in sorted(by_step):
            live.step = step
            for name, value in by_step[step].items():
                live.log_metric(name, value)
        for key, value in summary.items():
            live.summary[key] = value
    # dvc.yaml declares the curve folder: it must exist even when nothing was trained.
    (live_dir / "plots" / "metrics").mkdir(parents=True, exist_ok=True)
