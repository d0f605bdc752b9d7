"""The retriever on sentence-transformers' `SentenceTransformerTrainer`: the model assembled
from the pretrain-adapt folder, the examples as (anchor, positive, negative) texts, and the
trainer with what this project adds (tokens counted, the user-level DP step).

The library brings the rest: `MultipleNegativesRankingLoss` (InfoNCE over the batch's
positives and hard negatives; under DDP it gathers every process's vectors, so the in-batch
negatives are the global batch's), the no-duplicates batch sampler (no text twice in a batch,
so a product is never another example's in-batch negative for its own query, and a query's
other relevant products are never its negatives), one tokenisation length per tower, and
everything `transformers.Trainer` does (`training.hf_trainer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.data_collator import (
    SentenceTransformerDataCollator,
)
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.modules import Pooling

from shopflow.core.config import RetrieverConfig
from shopflow.models.bi_encoder import TextEncoder
from shopflow.training.hf_trainer import trainer_arguments
from shopflow.training.retrieval_examples import NO_NEGATIVE, Examples
from shopflow.training.runtime import Runtime

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# The tower each text column is tokenised for, and the `max_length` key of that tower.
TOWERS = {"anchor": "query", "positive": "document", "negative": "document"}


def sentence_model(encoder: Path, runtime: Runtime) -> SentenceTransformer:
    """The pretrain-adapt transformer, mean-pooled over real tokens and L2-normalised: the
    embedding `models.bi_encoder.TextEncoder` computes (all-MiniLM-L6-v2's recipe), so the
    trained transformer is served by the project's encoder unchanged."""
    body = Transformer(str(encoder))
    if getattr(body.auto_model, "pooler", None) is not None:
        body.auto_model.pooler = None  # unused by mean pooling; DDP requires every param used
    pooling = Pooling(body.get_embedding_dimension(), "mean")
    return SentenceTransformer(modules=[body, pooling, Normalize()], device=str(runtime.device))


def text_encoder(model: SentenceTransformer) -> TextEncoder:
    """The project's encoder on `model`'s transformer: the same weights, the API the stage
    evaluates, audits and saves with."""
    return TextEncoder(cast("PreTrainedModel", model[0].auto_model))


def triplets(examples: Examples, item_texts: Sequence[str], seed: int) -> Dataset:
    """(anchor, positive, negative) texts of `examples`. An example without a hard negative
    (a purchase) gets a random catalogue product other than its positive: every row needs
    the column, and an empty placeholder would be the same text in many rows, which the
    no-duplicates sampler keeps out of one batch."""
    rng = np.random.default_rng([seed, len(examples)])
    negatives = examples.negatives.copy()
    missing = negatives == NO_NEGATIVE
    drawn = rng.integers(len(item_texts) - 1, size=int(missing.sum()))
    positives = examples.positives[missing]
    negatives[missing] = drawn + (drawn >= positives)  # any product but the positive
    return Dataset.from_dict(
        {
            "anchor": list(examples.queries),
            "positive": [item_texts[p] for p in examples.positives],
            "negative": [item_texts[n] for n in negatives],
        }
    )


def retriever_trainer(
    model: SentenceTransformer,
    cfg: RetrieverConfig,
    folder: Path,
    runtime: Runtime,
    *,
    seed: int,
    train: Dataset,
    valid: Dataset | None,
    settings: Mapping[str, Any] | None = None,
) -> RetrieverTrainer:
    """The retriever's trainer (the stage's and `make bench-train`'s): InfoNCE with
    `MultipleNegativesRankingLoss` at scale 1/temperature (the vectors are unit length, so
    cosine is the dot product the service ranks by), the no-duplicates sampler, queries and
    products each at their own length, the held-out loss on batches of the training size (its
    in-batch negatives), checkpoints in `folder`; `settings` and then `retriever.trainer_args`
    on top of the knobs' arguments."""
    arguments = trainer_arguments(
        "retriever",
        cfg,
        folder,
        runtime,
        seed=seed,
        batch_size=cfg.batch_size,
        eval_batch_size=cfg.batch_size,
        settings={
            "batch_sampler": "no_duplicates",
            "include_num_input_tokens_seen": "no",  # counted by the trainer, every column
            **({"eval_strategy": "no"} if valid is None else {}),
            **(settings or {}),
        },
        extra=cfg.trainer_args,
        arguments_class=SentenceTransformerTrainingArguments,
    )
    collator = SentenceTransformerDataCollator(
        preprocess_fn=model.preprocess,
        router_mapping=TOWERS,
        max_length={"query": cfg.max_query_len, "document": cfg.max_item_len},
    )
    loss = MultipleNegativesRankingLoss(
        model, scale=1.0 / cfg.temperature, gather_across_devices=runtime.world_size > 1
    )
    return RetrieverTrainer(
        model=model,
        args=cast(SentenceTransformerTrainingArguments, arguments),
        train_dataset=train,
        eval_dataset=valid,
        loss=loss,
        data_collator=collator,
    )


class WithoutModelCard:
    """A sentence-transformers trainer without its model-card callback (which embeds sample
    rows when the trainer starts, to describe a model published to a hub): the stage writes
    its own metadata (`shopflow.json`)."""

    def add_model_card_callback(self, default_args_dict: dict[str, Any]) -> None:
        return None


class RetrieverTrainer(WithoutModelCard, SentenceTransformerTrainer):
    """`SentenceTransformerTrainer` that counts the tokens it trains on (every text column's
    real tokens; the library's counter reads one `input_ids` column) and, when given a
    `private_step`, runs that step instead of its own forward and backward."""

    # Sets the step's gradients (clipped per customer and noised) and returns its mean loss
    # and the tokens it read: user-level DP-SGD (`training.privacy`), which samples its own
    # customers.
    private_step: Callable[[], tuple[torch.Tensor, int]] | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            masks = [v for k, v in inputs.items() if k.endswith("_attention_mask")]
            tokens = torch.stack([m.sum() for m in masks]).sum().reshape(1)
            self.state.num_input_tokens_seen += int(self.accelerator.gather(tokens).sum())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.private_step is None:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        loss, tokens = self.private_step()
        self.state.num_input_tokens_seen += tokens
        return loss.detach().to(self.args.device)
