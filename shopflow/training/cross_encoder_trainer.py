"""The reranker on sentence-transformers' `CrossEncoderTrainer`: the model (the project's
cross-encoder with the retriever prior as a module of its own), the listwise loss as a loss
class, and the groups of every step as the trainer's data.

The trainer brings what `transformers.Trainer` does (`training.hf_trainer`) and the head's
own learning rate (`learning_rate_mapping`). What stays the project's: the groups (graded
judgments and inverse-propensity-weighted clicks, `listwise_groups`), the pairs tokenised
once and joined per pair as the service joins them (`models.cross_encoder.PairTokens`), the
retriever prior in the score, and the listwise loss (`losses.listwise_loss`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from datasets import Dataset
from sentence_transformers import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
from sentence_transformers.base.modules import Transformer
from sentence_transformers.base.modules.module import Module
from torch.utils.data import BatchSampler, SequentialSampler

from shopflow.core.config import RerankerConfig
from shopflow.core.errors import ConfigError
from shopflow.models.cross_encoder import CrossEncoderModule, PairTokens
from shopflow.training.hf_trainer import trainer_arguments
from shopflow.training.listwise_groups import Group
from shopflow.training.losses import listwise_loss
from shopflow.training.runtime import Runtime
from shopflow.training.sentence_trainer import WithoutModelCard


class RetrieverPrior(Module):
    """Adds `weight · prior` (the retriever's cosine of each pair, in the features) to the
    transformer's score: `CrossEncoderModule`'s score as a sentence-transformers module, so
    the trainer's checkpoints hold the weight with the transformer's."""

    def __init__(self, weight: torch.nn.Parameter | None = None) -> None:
        super().__init__()
        self.weight = weight if weight is not None else torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, features: dict[str, Any], **kwargs) -> dict[str, Any]:
        prior = features.get("prior")
        if prior is not None:  # text alone (the library's model card) scores without it
            scores = features["scores"]
            features["scores"] = scores.float() + self.weight * prior.reshape(scores.shape)
        return features

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        init_defaults: dict[str, Any] | None = None,
        **kwargs,
    ) -> RetrieverPrior:
        return cls.load_torch_weights(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
            model=cls(),
        )


def reranker_model(module: CrossEncoderModule, encoder: Path, runtime: Runtime) -> CrossEncoder:
    """`module`'s transformer and prior weight (the same tensors) as a sentence-transformers
    `CrossEncoder`: what the trainer trains is what the stage evaluates and saves."""
    body = Transformer(
        str(encoder), transformer_task="sequence-classification", config_kwargs={"num_labels": 1}
    )
    body.model = module.model
    prior = RetrieverPrior(module.prior_weight)
    return CrossEncoder(modules=[body, prior], device=str(runtime.device))


class ListwiseLoss(torch.nn.Module):
    """The listwise softmax cross-entropy of each group (`losses.listwise_loss`), averaged over
    the batch's groups, all their pairs scored in one forward pass. A row is a group: its
    query, its products (catalogue rows) and their targets (gains or click weights)."""

    def __init__(
        self,
        model: CrossEncoder,
        pairs: PairTokens,
        query_tokens: Mapping[str, list[int]],
        product_tokens: Sequence[list[int]],
        query_vectors: Mapping[str, np.ndarray],
        item_vectors: np.ndarray,
    ) -> None:
        super().__init__()
        self.model = model
        self.pairs, self.query_tokens, self.product_tokens = pairs, query_tokens, product_tokens
        self.query_vectors, self.item_vectors = query_vectors, item_vectors
        self.tokens = 0  # real tokens of the last batch (the trainer counts them)

    def forward(self, inputs: list, labels: list[torch.Tensor], **kwargs) -> torch.Tensor:
        queries, products = inputs
        groups = list(zip(queries, products, strict=True))
        joined = [
            self.pairs.join(self.query_tokens[q], self.product_tokens[p])
            for q, items in groups
            for p in items
        ]
        ids, types, mask = self.pairs.pad(joined)
        vectors = self.item_vectors
        prior = np.concatenate([vectors[items] @ self.query_vectors[q] for q, items in groups])
        device = self.model.device
        features = {
            "input_ids": ids.to(device),
            "token_type_ids": types.to(device),
            "attention_mask": mask.to(device),
            "prior": torch.as_tensor(prior, dtype=torch.float32, device=device),
        }
        self.tokens = int(mask.sum())
        scores = self.model(features)["scores"].reshape(-1).float()
        losses, at = [], 0
        for target in labels:
            losses.append(listwise_loss(scores[at : at + len(target)], target.float().to(device)))
            at += len(target)
        return torch.stack(losses).mean()


def groups_dataset(groups: Sequence[Group]) -> Dataset:
    """Groups as rows (query, products, label), in the order given."""
    return Dataset.from_dict(
        {
            "query": [q for q, _, _ in groups],
            "products": [np.asarray(p).tolist() for _, p, _ in groups],
            "label": [np.asarray(t, dtype=float).tolist() for _, _, t in groups],
        }
    )


def in_order(dataset, batch_size: int, drop_last: bool, **kwargs) -> BatchSampler:
    """Batches in the rows' order: the rows are the steps' groups, drawn by the stage."""
    return BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last)


def head_pattern(loss: torch.nn.Module, head: Sequence[torch.nn.Parameter]) -> str:
    """A regular expression matching exactly the names `head`'s parameters have in `loss`."""
    ids = {id(p) for p in head}
    names = [re.escape(n) for n, p in loss.named_parameters() if id(p) in ids]
    return rf"^({'|'.join(names)})$"


def reranker_trainer(
    loss: ListwiseLoss,
    head: Sequence[torch.nn.Parameter],
    cfg: RerankerConfig,
    folder: Path,
    runtime: Runtime,
    *,
    seed: int,
    train: Dataset,
    valid: Dataset | None,
    settings: Mapping[str, Any] | None = None,
) -> CrossEncoderTrainer:
    """The reranker's trainer (the stage's and `make bench-train`'s): a step is
    `groups_per_step` consecutive rows of `train`, split over the processes and accumulation
    steps; `head` learns at `head_lr`, the body at `lr`; checkpoints in `folder`; `settings`
    and then `reranker.trainer_args` on top of the knobs' arguments."""
    accumulate = int(cfg.trainer_args.get("gradient_accumulation_steps", 1))
    if cfg.groups_per_step % (runtime.world_size * accumulate):
        raise ConfigError(
            f"reranker.groups_per_step {cfg.groups_per_step} does not split over "
            f"{runtime.world_size} processes x {accumulate} accumulation steps"
        )
    arguments = trainer_arguments(
        "reranker",
        cfg,
        folder,
        runtime,
        seed=seed,
        batch_size=cfg.groups_per_step,
        eval_batch_size=cfg.groups_per_step,
        settings={
            "batch_sampler": in_order,
            "learning_rate_mapping": {head_pattern(loss, head): cfg.head_lr},
            "include_num_input_tokens_seen": "no",  # counted by the trainer, from the loss
            **({"eval_strategy": "no"} if valid is None else {}),
            **(settings or {}),
        },
        extra=cfg.trainer_args,
        arguments_class=CrossEncoderTrainingArguments,
    )
    return RerankerTrainer(
        model=loss.model,
        args=cast(CrossEncoderTrainingArguments, arguments),
        train_dataset=train,
        eval_dataset=valid,
        loss=loss,
    )


class RerankerTrainer(WithoutModelCard, CrossEncoderTrainer):
    """`CrossEncoderTrainer` that counts the real tokens of the pairs it trains on."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            tokens = torch.tensor([cast(ListwiseLoss, self.loss).tokens], device=self.args.device)
            self.state.num_input_tokens_seen += int(self.accelerator.gather(tokens).sum())
        return result
