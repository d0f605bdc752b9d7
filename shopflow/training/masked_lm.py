"""Domain-adaptive masked-LM pretraining of the base encoder on the shop's own text.

The base encoder (params `models.base`) keeps learning masked-token prediction on
`corpus.txt` (titles, descriptions, attribute strings, training queries), so that words like
"couch" and "settee" move close to the products they describe before fine-tuning.
all-MiniLM-L6-v2 ships without a masked-LM head: the head's decoder is tied to the input
embeddings and its transform starts as the identity, so the untrained head already scores
tokens by similarity to the final hidden state, instead of by noise.

The held-out MLM loss (a seeded slice of the corpus, the same masks every time) is the
validation curve; the task refuses to write an encoder whose held-out loss did not drop. Next
to it stands the unigram loss of the same masked tokens (each predicted by its frequency in
the training lines): a model above it has learned word frequencies at best, not the shop.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from shopflow.core import paths
from shopflow.core.artifacts import write_json
from shopflow.core.config import Params, PretrainConfig
from shopflow.core.errors import StageInputError, TrainingError
from shopflow.training.hf_trainer import fit_with_trainer, trainer_arguments, trainer_class
from shopflow.training.runtime import Checkpoints, Fitted, Runtime
from shopflow.training.trainer import TrainingTask, training_figures

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

EVAL_SEED = 12345


def split_corpus(lines: list[str], params: Params) -> tuple[list[str], list[str]]:
    """A seeded held-out slice of the corpus (at least 8 lines), the rest for training."""
    cfg = params.pretrain
    generator = torch.Generator().manual_seed(params.seed)
    order = torch.randperm(len(lines), generator=generator).tolist()
    n_heldout = min(max(8, round(len(lines) * cfg.heldout_share)), cfg.max_heldout_lines)
    if len(lines) < n_heldout + 8:
        raise StageInputError(
            f"{paths.CORPUS}: {len(lines)} lines is too little text to pretrain on"
        )
    heldout = [lines[i] for i in order[:n_heldout]]
    train = [lines[i] for i in order[n_heldout:]]
    return train, heldout


class TokenizedLines:
    """Pre-tokenised text as the trainer's examples: line i's token ids, special tokens mask
    (for whole-word masking, character offsets too) and the seed of its masks, made of
    (`seed`, epoch, i). The trainer's data loader sets the epoch (`set_epoch`), so the masks
    of a batch depend only on which lines it holds and when: not on the global RNG, which
    the loader reads ahead of a checkpoint, and so a resumed run masks as the uninterrupted
    one did."""

    def __init__(
        self, lines: list[str], tokenizer, max_len: int, offsets: bool = False, seed: int = 0
    ) -> None:
        encoded = tokenizer(
            lines,
            truncation=True,
            max_length=max_len,
            return_special_tokens_mask=True,
            return_offsets_mapping=offsets,
        )
        keys = ["input_ids", "special_tokens_mask"] + (["offset_mapping"] if offsets else [])
        columns = [encoded[key] for key in keys]
        self.rows = [dict(zip(keys, values, strict=True)) for values in zip(*columns, strict=True)]
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {**self.rows[i], "mask_seed": (self.seed, self.epoch, i)}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class MaskingCollator:
    """BERT masking of training batches (`DataCollatorForLanguageModeling`) from a generator
    seeded by the batch's lines (`TokenizedLines`); held-out examples arrive masked already
    (`fixed_masks`) and are only padded, so every held-out loss sees the same masks."""

    def __init__(self, tokenizer, cfg: PretrainConfig) -> None:
        from transformers import DataCollatorForLanguageModeling, DataCollatorForTokenClassification

        whole = cfg.whole_word_mask  # the library masks whole words with [MASK] only
        self.masking = DataCollatorForLanguageModeling(
            tokenizer,
            mlm_probability=cfg.mask_prob,
            whole_word_mask=whole,
            mask_replace_prob=1.0 if whole else 0.8,
            random_replace_prob=0.0 if whole else 0.1,
        )
        self.padding = DataCollatorForTokenClassification(tokenizer)

    def __call__(self, examples: list[dict]) -> dict:
        if "labels" in examples[0]:
            return self.padding(examples)
        seeds = [part for example in examples for part in example["mask_seed"]]
        state = np.random.SeedSequence(seeds).generate_state(2, np.uint64)
        self.masking.generator = torch.Generator().manual_seed(int(state[0] >> 1))
        rows = [{k: v for k, v in example.items() if k != "mask_seed"} for example in examples]
        return self.masking(rows)


def fixed_masks(data: TokenizedLines, collator: MaskingCollator) -> list[dict]:
    """The held-out lines masked once, each by its own seed: (input ids, labels), labels -100
    where no token was masked."""
    masked = [collator([data[i]]) for i in range(len(data))]
    return [
        {"input_ids": m["input_ids"][0].tolist(), "labels": m["labels"][0].tolist()} for m in masked
    ]


def load_mlm(base: str):
    """The base model with a masked-LM head (tied decoder, identity transform if it had none)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model, info = AutoModelForMaskedLM.from_pretrained(base, output_loading_info=True)
    fresh_head = any("transform.dense" in key for key in info["missing_keys"])
    if fresh_head and hasattr(model, "cls"):
        transform = model.cls.predictions.transform
        with torch.no_grad():
            transform.dense.weight.copy_(torch.eye(transform.dense.weight.shape[0]))
            transform.dense.bias.zero_()
            model.cls.predictions.bias.zero_()
        log.info("no masked-LM head in the base model: decoder tied to embeddings, transform = I")
    return tokenizer, model


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each token's masked-LM loss (0 where nothing was masked): what the trainer keeps of a
    held-out batch's logits, instead of the logits themselves (vocabulary-sized)."""
    return torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )


def heldout_loss(prediction) -> dict[str, float]:
    """The mean loss over all masked held-out tokens (the trainer's own `eval_loss` averages
    batch means instead, which weighs a token of a short batch more)."""
    losses, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
    masked = labels != -100
    return {"heldout_loss": float(losses[masked].sum() / max(int(masked.sum()), 1))}


def unigram_loss(train: TokenizedLines, heldout: list[dict], tokenizer) -> float:
    """Cross-entropy of the held-out masked tokens under the training lines' token frequencies.

    The floor a masked-LM must go below before it knows more than which words are common:
    the same masks as the held-out loss, add-one smoothing over the tokenizer's vocabulary so a
    token never seen in training costs a finite amount.
    """
    counts = torch.ones(len(tokenizer), dtype=torch.float64)
    for row in train.rows:
        ids = torch.tensor(row["input_ids"])
        ordinary = ids[~torch.tensor(row["special_tokens_mask"], dtype=torch.bool)]
        counts += torch.bincount(ordinary, minlength=len(tokenizer)).double()
    log_p = counts.log() - counts.sum().log()
    labels = torch.tensor([label for row in heldout for label in row["labels"]])
    masked = labels[labels != -100]
    return float(-log_p[masked].sum()) / max(len(masked), 1)


def hash_lines(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def save_encoder(model: PreTrainedModel, tokenizer, folder: Path, meta: dict) -> None:
    """The encoder without any head (`base_model` of a plain encoder is the encoder itself)."""
    encoder = cast("PreTrainedModel", model.base_model)
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(folder / "shopflow.json", meta)


class MaskedLMTask(TrainingTask["PreTrainedModel"]):
    """pretrain-adapt: masked-LM on the corpus with `transformers.Trainer`, validated on its
    held-out slice."""

    stage = "pretrain"
    curve = "mlm_loss"
    output = paths.ENCODER

    def __init__(self, params: Params, base: str, lines: list[str]) -> None:
        super().__init__(params)
        self.base = base
        self.lines = lines

    @property
    def knobs(self) -> PretrainConfig:
        return self.params.pretrain

    @property
    def samples_per_step(self) -> int:
        return self.knobs.batch_size

    def setup(self, runtime: Runtime) -> PreTrainedModel:
        cfg = self.knobs
        train_lines, heldout_lines = split_corpus(self.lines, self.params)
        torch.manual_seed(self.params.seed)
        self.tokenizer, model = load_mlm(self.base)
        offsets = cfg.whole_word_mask
        seed, max_len = self.params.seed, cfg.max_seq_len
        self.train_data = TokenizedLines(train_lines, self.tokenizer, max_len, offsets, seed)
        self.collator = MaskingCollator(self.tokenizer, cfg)
        heldout = TokenizedLines(heldout_lines, self.tokenizer, max_len, offsets, EVAL_SEED)
        self.heldout = fixed_masks(heldout, self.collator)
        log.info(
            "pretrain: %d training lines, %d held out%s",
            len(self.train_data),
            len(self.heldout),
            " (whole-word masking)" if offsets else "",
        )
        return model

    def key(self, runtime: Runtime) -> dict[str, object]:
        return {
            "text": hash_lines(self.lines),
            "params": self.knobs.model_dump(),
            "base": self.params.models.base,
            "seed": self.params.seed,
            "world": runtime.world_size,
        }

    def fit(self, model: PreTrainedModel, runtime: Runtime, checkpoints: Checkpoints) -> Fitted:
        cfg = self.knobs
        arguments = trainer_arguments(
            self.stage,
            cfg,
            checkpoints.folder,
            runtime,
            seed=self.params.seed,
            batch_size=cfg.batch_size,
            eval_batch_size=cfg.batch_size,
            group_by_length=cfg.group_by_length,
            extra=cfg.trainer_args,
        )
        trainer = trainer_class()(
            model=model,
            args=arguments,
            data_collator=self.collator,
            train_dataset=self.train_data,
            eval_dataset=self.heldout,
            processing_class=self.tokenizer,
            compute_metrics=heldout_loss,
            preprocess_logits_for_metrics=token_losses,
        )
        return fit_with_trainer(
            trainer,
            stage=self.stage,
            curve=self.curve,
            checkpoints=checkpoints,
            live_dir=paths.live(self.stage),
            eval_key="eval_heldout_loss",
        )

    def evaluate(self, model: PreTrainedModel, fitted: Fitted, runtime: Runtime) -> dict:
        # the held-out loss before the first step and after the last (the curve's ends)
        (_, before), (_, after) = fitted.valid_history[0], fitted.valid_history[-1]
        self.heldout_ends = before, after
        unigram = unigram_loss(self.train_data, self.heldout, self.tokenizer)
        below = after < unigram
        result = {
            "enabled": True,
            "base_model": self.params.models.base,
            "heldout_lines": len(self.heldout),
            "heldout_loss_before": round(before, 4),
            "heldout_loss_after": round(after, 4),
            "heldout_perplexity_after": round(math.exp(min(after, 50)), 2),
            "relative_drop": round((before - after) / before, 4),
            "heldout_unigram_loss": round(unigram, 4),
            "below_unigram": below,
            **training_figures(self, fitted, runtime),
        }
        log.info(
            "pretrain: held-out MLM loss %.4f -> %.4f (%.1f%% lower)",
            before,
            after,
            100 * result["relative_drop"],
        )
        log.info(
            "pretrain: the unigram loss of the same masked tokens is %.4f: the adapted encoder "
            "is %s (%s)",
            unigram,
            "below it" if below else "not below it",
            "it predicts masked words from their context"
            if below
            else "it knows word frequencies at best; more steps or text would be needed",
        )
        if not after < before:
            raise TrainingError(
                f"pretrain: the held-out MLM loss did not drop ({before:.4f} -> {after:.4f}); "
                f"check pretrain.lr / pretrain.steps. The encoder was not written."
            )
        return result

    def save(self, model: PreTrainedModel, folder: Path, result: dict) -> None:
        save_encoder(
            model, self.tokenizer, folder, {"base_model": self.params.models.base, **result}
        )

    def summary(self, result: dict) -> dict[str, float]:
        before, after = self.heldout_ends
        return {"heldout_loss_before": before, "heldout_loss_after": after}
