"""Training on Hugging Face's `Trainer`: the project's knobs as `TrainingArguments`, its curves
through DVCLive's Hugging Face callback, its progress lines, and exact resume through the
trainer's own checkpoints.

What the trainer does (and this project does not re-implement): AdamW with no decay on biases
and LayerNorm, linear warm-up and decay, gradient clipping and accumulation, length-grouped
batches, bf16 and TF32 on CUDA, torch.compile, DDP under `torchrun`/`accelerate launch`, and
checkpoints that hold the model, optimizer, scheduler, data position and RNG states, so a
killed run resumed with `resume_from_checkpoint` continues as the uninterrupted run would.

What stays here: the checkpoint folder is keyed by the run's inputs (`runtime.run_key`), so a
checkpoint of other data, params or code is never resumed; the held-out loss is also taken
at the last step; and a stage's `<section>.trainer_args` reach `TrainingArguments` as they
are, so any schedule, optimizer or batch setting the trainer knows is one param away.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shopflow.core.errors import ConfigError
from shopflow.core.progress import Progress
from shopflow.training.runtime import Checkpoints, Fitted, Knobs, Runtime

if TYPE_CHECKING:
    from transformers import Trainer, TrainingArguments

log = logging.getLogger(__name__)

# Arguments the project sets from its own knobs or needs as they are: a trainer_args entry
# for one of them is refused with the knob to use instead.
OWNED = {
    "output_dir": "the checkpoint folder is keyed by the run's inputs",
    "max_steps": "steps",
    "learning_rate": "lr",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps",
    "save_steps": "checkpoint_every",
    "eval_steps": "checkpoint_every",
    "seed": "seed (top level)",
    "data_seed": "seed (top level)",
    "torch_compile": "compile",
    "per_device_train_batch_size": "batch_size",
    "use_cpu": "models.device",
    "remove_unused_columns": "the stages' examples carry what their collators read",
    "report_to": "the curves go to dvclive/<stage> through DVCLive's callback",
}


def trainer_arguments(
    stage: str,
    knobs: Knobs,
    folder: Path,
    runtime: Runtime,
    *,
    seed: int,
    batch_size: int,
    eval_batch_size: int,
    group_by_length: bool = False,
    settings: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    arguments_class: type[TrainingArguments] | None = None,
) -> TrainingArguments:
    """`TrainingArguments` (or `arguments_class`, e.g. sentence-transformers' subclass) for
    one stage: its knobs, one global batch of `batch_size` split over the processes, the
    held-out loss at every checkpoint step, and on CUDA bf16 + TF32 + fused AdamW
    (+ torch.compile with `compile`). `settings` (what the stage's trainer needs) come next,
    `extra` (the section's `trainer_args`) last; the arguments the knobs own are refused by
    name (`OWNED`)."""
    from transformers import TrainingArguments

    arguments_class = arguments_class or TrainingArguments
    extra = dict(extra or {})
    known = {f.name for f in dataclasses.fields(arguments_class)}
    for key in extra:
        if key in OWNED:
            raise ConfigError(f"{stage}.trainer_args.{key}: set by the project ({OWNED[key]})")
        if key not in known:
            raise ConfigError(
                f"{stage}.trainer_args.{key}: not an argument of {arguments_class.__name__}"
            )
    every = knobs.checkpoint_every
    accumulate = int(extra.get("gradient_accumulation_steps", 1))
    per_device = math.ceil(batch_size / (runtime.world_size * accumulate))
    arguments: dict[str, Any] = {
        "output_dir": str(folder),
        "max_steps": knobs.steps,
        "learning_rate": knobs.lr,
        "weight_decay": knobs.weight_decay,
        "warmup_steps": knobs.warmup_steps,
        "lr_scheduler_type": "linear",
        "max_grad_norm": 1.0,
        "per_device_train_batch_size": per_device,
        "per_device_eval_batch_size": eval_batch_size,
        "train_sampling_strategy": "group_by_length" if group_by_length else "random",
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": every if every > 0 else knobs.steps,
        "save_strategy": "steps" if every > 0 else "no",
        "save_steps": max(every, 1),
        "save_total_limit": 1,
        "seed": seed,
        "data_seed": seed,
        "use_cpu": not runtime.cuda,
        "bf16": runtime.cuda,
        "tf32": runtime.cuda,
        "optim": "adamw_torch_fused" if runtime.cuda else "adamw_torch",
        "torch_compile": knobs.compile and runtime.cuda,
        "include_num_input_tokens_seen": "non_padding",
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
        "disable_tqdm": True,  # the progress lines below read well in Airflow and DVC logs
        "report_to": "none",  # DVCLive's callback is added explicitly (`LiveCurves`)
        "log_level": "warning",
    }
    return arguments_class(**(arguments | dict(settings or {}) | extra))


def trainer_class() -> type[Trainer]:
    """`transformers.Trainer` whose length-grouped order is drawn from a generator seeded by
    (seed, epoch): the library's sampler draws it from the global RNG when the epoch's data
    loader starts, which on resume happens before the checkpoint's RNG state is restored, so
    the resumed epoch would see other batches than the uninterrupted run."""
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthSampler(LengthGroupedSampler):
        def __init__(self, batch_size: int, dataset, seed: int) -> None:
            super().__init__(batch_size, dataset=dataset, model_input_name="input_ids")
            self.seed = seed
            self.set_epoch(0)

        def set_epoch(self, epoch: int) -> None:  # the data loader calls it every epoch
            self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    class SeededTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            size = self.args.train_batch_size * self.args.gradient_accumulation_steps
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthSampler(size, dataset, seed)

    return SeededTrainer


def _live_callback_class() -> type:
    from transformers.integrations import DVCLiveCallback

    class LiveCurves(DVCLiveCallback):
        """DVCLive's Hugging Face callback, writing `dvclive/<stage>` while training runs:
        each point at the trainer's global step (a train and a held-out value of one step
        line up), under the project's curve names, and, on resume, the curve up to the
        checkpoint first (from the restored trainer state), so that the resumed run's curve
        is the uninterrupted run's."""

        def __init__(self, live_dir: Path, names: Mapping[str, str]) -> None:
            from dvclive import Live

            live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
            super().__init__(live=live)
            self.names = dict(names)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            super().on_train_begin(args, state, control, model=model, **kwargs)
            for logged in state.log_history:  # empty unless resumed
                self.write(state, logged, int(logged.get("step", 0)))

        def on_log(self, args, state, control, model=None, logs=None, **kwargs):
            self.write(state, logs or {}, state.global_step)

        def write(self, state, logs: Mapping[str, Any], step: int) -> None:
            renamed = {self.names[k]: v for k, v in logs.items() if k in self.names}
            if renamed and state.is_world_process_zero and self.live is not None:
                self.live.step = step
                for name, value in renamed.items():
                    self.live.log_metric(name, value)
                self.live.make_summary()

    return LiveCurves


def _steps_callback_class() -> type:
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        """Progress lines with rate and ETA, a held-out loss at the last step too, the
        seconds spent on held-out losses (left out of the training throughput) and the
        tokens this run trained on (a resumed state carries the earlier run's)."""

        def __init__(self, stage: str, total: int, start: int) -> None:
            self.progress = Progress(stage, total, start=start)
            self.evaluating = 0.0
            self.tokens_before = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.tokens_before = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps and args.eval_strategy != "no":
                control.should_evaluate = True  # whatever the checkpoint spacing
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.progress.update(
                    state.global_step, loss=logs["loss"], lr=logs.get("learning_rate", 0.0)
                )

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self.evaluating += float((metrics or {}).get("eval_runtime", 0.0))

    return StepLog


def quiet(trainer: Trainer) -> Trainer:
    """`trainer` without the callback that prints a dict every logging step (the stage logs
    progress lines with rate and ETA; a benchmark logs its own figures)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def last_checkpoint(folder: Path) -> Path | None:
    """The trainer's newest complete checkpoint in `folder` (`checkpoint-<step>`), if any."""
    if not folder.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and (p / "trainer_state.json").exists()
    ]
    return max(found)[1] if found else None


def fit_with_trainer(
    trainer: Trainer,
    *,
    stage: str,
    curve: str,
    checkpoints: Checkpoints,
    live_dir: Path,
    eval_key: str = "eval_loss",
) -> Fitted:
    """Train with `trainer`, resuming from the run's last checkpoint if any; the training
    and held-out curves (`train/<curve>`, `valid/<curve>`, from the trainer's `loss` and
    `eval_key`) go to DVCLive live, with the learning rate and gradient norm."""
    resume = last_checkpoint(checkpoints.folder)
    start = int(resume.name.split("-")[1]) if resume else 0
    if resume is not None:
        log.info("resuming from the checkpoint at step %d (%s)", start, resume)
    args = trainer.args
    # A resumed run has the step-0 value in its state.
    args.eval_on_start = resume is None and args.eval_strategy != "no"
    names = {
        "loss": f"train/{curve}",
        eval_key: f"valid/{curve}",
        "learning_rate": "train/learning_rate",
        "grad_norm": "train/grad_norm",
    }
    quiet(trainer)
    steps = _steps_callback_class()(stage, args.max_steps, start)
    trainer.add_callback(_live_callback_class()(live_dir, names))
    trainer.add_callback(steps)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started - steps.evaluating
    logged = trainer.state.log_history
    history = [(int(e["step"]), float(e["loss"])) for e in logged if "loss" in e]
    valid = [(int(e["step"]), float(e[eval_key])) for e in logged if eval_key in e]
    return Fitted(
        history,
        valid,
        start,
        args.max_steps - start,
        seconds,
        checkpoints,
        tokens=int(trainer.state.num_input_tokens_seen - steps.tokens_before),
    )
