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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from shopflow.core import paths
from shopflow.core.artifacts import write_json
from shopflow.core.config import Params, PretrainConfig
from shopflow.core.errors import StageInputError, TrainingError
from shopflow.training.loop import Fitted, Runtime, batch_order, shard, unwrap
from shopflow.training.losses import mask_tokens
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
    """Pre-tokenised text: the trainer never waits on the tokenizer."""

    def __init__(self, lines: list[str], tokenizer, max_len: int) -> None:
        encoded = tokenizer(
            lines, truncation=True, max_length=max_len, return_special_tokens_mask=True
        )
        self.ids = [torch.tensor(x) for x in encoded["input_ids"]]
        self.special = [torch.tensor(x, dtype=torch.bool) for x in encoded["special_tokens_mask"]]
        self.lengths = torch.tensor([len(x) for x in self.ids])
        self.pad_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dynamic padding to the longest row of this batch: (ids, special, attention)."""
        rows = index.tolist()
        width = int(self.lengths[index].max())
        ids = torch.full((len(rows), width), self.pad_id)
        special = torch.ones((len(rows), width), dtype=torch.bool)
        for r, i in enumerate(rows):
            ids[r, : len(self.ids[i])] = self.ids[i]
            special[r, : len(self.ids[i])] = self.special[i]
        return ids, special, ids != self.pad_id


def load_mlm(base: str, runtime: Runtime):
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
    return tokenizer, model.to(runtime.device)


def heldout_batches(
    data: TokenizedLines, tokenizer, cfg: PretrainConfig
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The held-out lines in batches, masked the same way every time: (inputs, labels,
    attention); labels are -100 where no token was masked."""
    generator = torch.Generator().manual_seed(EVAL_SEED)
    for start in range(0, len(data), cfg.batch_size):
        ids, special, attention = data.batch(
            torch.arange(start, min(start + cfg.batch_size, len(data)))
        )
        inputs, labels = mask_tokens(ids, special, cfg.mask_prob, generator, tokenizer)
        yield inputs, labels, attention


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module, data: TokenizedLines, tokenizer, cfg: PretrainConfig, runtime: Runtime
) -> float:
    """Mean masked-token loss over the held-out lines, with the same masks every time."""
    model.eval()
    total, count = 0.0, 0
    for inputs, labels, attention in heldout_batches(data, tokenizer, cfg):
        with runtime.autocast():
            logits = unwrap(model)(
                input_ids=inputs.to(runtime.device), attention_mask=attention.to(runtime.device)
            ).logits
        mask = labels != -100
        if mask.any():
            loss = torch.nn.functional.cross_entropy(
                logits.float()[mask.to(runtime.device)],
                labels[mask].to(runtime.device),
                reduction="sum",
            )
            total += float(loss)
            count += int(mask.sum())
    model.train()
    return total / max(count, 1)


def unigram_loss(
    train: TokenizedLines, heldout: TokenizedLines, tokenizer, cfg: PretrainConfig
) -> float:
    """Cross-entropy of the held-out masked tokens under the training lines' token frequencies.

    The floor a masked-LM must go below before it knows more than which words are common:
    the same masks as `heldout_loss`, add-one smoothing over the tokenizer's vocabulary so a
    token never seen in training costs a finite amount.
    """
    counts = torch.ones(len(tokenizer), dtype=torch.float64)
    for ids, special in zip(train.ids, train.special, strict=True):
        counts += torch.bincount(ids[~special], minlength=len(tokenizer)).double()
    log_p = counts.log() - counts.sum().log()
    total, count = 0.0, 0
    for _, labels, _ in heldout_batches(heldout, tokenizer, cfg):
        masked = labels[labels != -100]
        total -= float(log_p[masked].sum())
        count += len(masked)
    return total / max(count, 1)


def hash_lines(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def save_encoder(model: PreTrainedModel, tokenizer, folder: Path, meta: dict) -> None:
    """The encoder without any head (`base_model` of a plain encoder is the encoder itself)."""
    encoder = cast("PreTrainedModel", model.base_model)
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(folder / "shopflow.json", meta)


class MaskedLMTask(TrainingTask["PreTrainedModel"]):
    """pretrain-adapt: masked-LM on the corpus, validated on its held-out slice."""

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
        self.tokenizer, model = load_mlm(self.base, runtime)
        self.train_data = TokenizedLines(train_lines, self.tokenizer, cfg.max_seq_len)
        self.heldout = TokenizedLines(heldout_lines, self.tokenizer, cfg.max_seq_len)
        log.info(
            "pretrain: %d training lines, %d held out", len(self.train_data), len(self.heldout)
        )
        self.runtime = runtime
        return model

    def key(self, runtime: Runtime) -> dict[str, object]:
        return {
            "text": hash_lines(self.lines),
            "params": self.knobs.model_dump(),
            "base": self.params.models.base,
            "seed": self.params.seed,
            "world": runtime.world_size,
        }

    def loss(self, forward: torch.nn.Module, step: int) -> torch.Tensor:
        cfg, seed, runtime = self.knobs, self.params.seed, self.runtime
        lengths = self.train_data.lengths if cfg.group_by_length else None
        order = batch_order(len(self.train_data), cfg.batch_size, seed, step, lengths)
        ids, special, attention = self.train_data.batch(shard(order, runtime))
        generator = torch.Generator().manual_seed(seed * 7919 + step)
        inputs, labels = mask_tokens(ids, special, cfg.mask_prob, generator, self.tokenizer)
        self.tokens += int(attention.sum())
        with runtime.autocast():
            out = forward(
                input_ids=inputs.to(runtime.device),
                attention_mask=attention.to(runtime.device),
                labels=labels.to(runtime.device),
            )
        return out.loss

    def validator(self) -> Callable[[torch.nn.Module], float]:
        return lambda model: heldout_loss(
            model, self.heldout, self.tokenizer, self.knobs, self.runtime
        )

    def evaluate(self, model: PreTrainedModel, fitted: Fitted, runtime: Runtime) -> dict:
        # the held-out loss before the first step and after the last (the curve's ends)
        (_, before), (_, after) = fitted.valid_history[0], fitted.valid_history[-1]
        self.heldout_ends = before, after
        unigram = unigram_loss(self.train_data, self.heldout, self.tokenizer, self.knobs)
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
