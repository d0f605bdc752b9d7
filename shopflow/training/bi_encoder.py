"""Fine-tuning the two-tower retriever: its examples, loss and validation (the retriever
stage's task).

Both towers share the encoder (`shopflow.models.bi_encoder.TextEncoder`). The query tower
reads the query, optionally followed by the titles of the user's recent items
(`shopflow.data.features.query_text`); with no query it reads the recent items alone, which
is how the same model recommends. The item tower reads the product text.

Training examples (train split only) are (query text, positive product, hard negative) from
judgments, clicks and purchases (`retrieval_examples`). The loss is InfoNCE over the batch
(`losses.contrastive_loss`): every other positive and every hard negative compete with the
true product.

After training, the catalogue is embedded once and saved beside the model with the training
split's popularity (the feature ranker reads it). The query tower reading a customer's
recent products (no query) is the user tower, one of the recommendation mix's sources.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shopflow.core import paths
from shopflow.core.artifacts import files_hash, write_json, write_parquet
from shopflow.core.config import RetrieverConfig
from shopflow.data.features import product_text
from shopflow.data.tables import read_prepared
from shopflow.evaluation.offline import bi_encoder_scores, summarize
from shopflow.models.base import quiet_transformers, require_model
from shopflow.models.bi_encoder import BiEncoder, TextEncoder
from shopflow.models.lexical import Bm25Settings
from shopflow.models.popularity import popularity, popularity_prior
from shopflow.models.tokens import pad, tokenize
from shopflow.training.loop import Fitted, Runtime, batch_order, shard
from shopflow.training.losses import contrastive_loss
from shopflow.training.retrieval_examples import (
    NO_NEGATIVE,
    Examples,
    bm25_negatives,
    training_examples,
    validation_examples,
)
from shopflow.training.trainer import TrainingTask, training_figures

log = logging.getLogger(__name__)


def attach_popularity(retriever: BiEncoder, tables: dict[str, pd.DataFrame]) -> dict:
    """The training split's popularity on the retriever's products (`item_prior`), saved with
    its vectors: the feature ranker's popularity feature. Without clicks or purchases there
    is none."""
    pairs, sequences = tables.get("pairs"), tables.get("sequences")
    if pairs is None or sequences is None:
        return {"popularity_prior": False, "reason": "no click or purchase log"}
    retriever.item_prior = popularity_prior(popularity(pairs, sequences), retriever.item_ids)
    return {
        "popularity_prior": True,
        "products_with_interactions": int((retriever.item_prior > 0).sum()),
    }


@dataclass
class Batches:
    """Examples with their query texts tokenised once (`rows[i]`: the tokens of example i)."""

    examples: Examples
    tokens: list[list[int]]
    rows: np.ndarray

    @classmethod
    def of(cls, examples: Examples, tokenizer, max_len: int) -> Batches:
        unique, rows = np.unique(examples.queries, return_inverse=True)
        return cls(examples, tokenize(tokenizer, unique.tolist(), max_len), rows)


class BiEncoderTask(TrainingTask[TextEncoder]):
    """The retriever stage: InfoNCE over in-batch and hard negatives, then the popularity
    prior, the catalogue's vectors and the test numbers."""

    stage = "retriever"
    curve = "contrastive_loss"
    output = paths.RETRIEVER

    @property
    def knobs(self) -> RetrieverConfig:
        return self.params.retriever

    @property
    def samples_per_step(self) -> int:
        return self.knobs.batch_size

    def setup(self, runtime: Runtime) -> TextEncoder:
        from transformers import AutoTokenizer

        quiet_transformers()
        cfg, params = self.knobs, self.params
        require_model(paths.ENCODER, "pretrain")
        self.tables = read_prepared()
        products = self.tables["products"]
        negatives = bm25_negatives(
            self.tables, cfg.bm25_negative_depth, Bm25Settings.load(paths.BM25_SETTINGS)
        )
        examples = training_examples(self.tables, params, negatives)
        self.tokenizer = AutoTokenizer.from_pretrained(str(paths.ENCODER))
        torch.manual_seed(params.seed)
        model = TextEncoder.from_pretrained(paths.ENCODER).to(runtime.device)
        self.item_texts = product_text(products)
        self.item_tokens = tokenize(self.tokenizer, self.item_texts, cfg.max_item_len)
        self.train_batches = Batches.of(examples, self.tokenizer, cfg.max_query_len)
        valid = validation_examples(self.tables, params)
        self.valid_batches = (
            None if valid is None else Batches.of(valid, self.tokenizer, cfg.max_query_len)
        )
        self.runtime = runtime
        return model

    def key(self, runtime: Runtime) -> dict[str, object]:
        return {
            "data": files_hash(paths.PREPARED, "*.parquet"),
            "encoder": files_hash(paths.ENCODER, "*.safetensors"),
            "params": self.knobs.model_dump(),
            "relevant_at": self.params.evaluation.relevant_at,
            "seed": self.params.seed,
            "world": runtime.world_size,
        }

    def batch_loss(
        self, forward: torch.nn.Module, batches: Batches, index: np.ndarray
    ) -> torch.Tensor:
        """InfoNCE of the examples at `index`: their queries against their positives and the
        hard negatives they have."""
        dev, pad_id = self.runtime.device, self.tokenizer.pad_token_id
        examples = batches.examples
        positives = examples.positives[index]
        negatives = examples.negatives[index]
        negatives = negatives[negatives != NO_NEGATIVE]
        padded = [
            pad([batches.tokens[batches.rows[i]] for i in index], pad_id),
            pad([self.item_tokens[p] for p in positives], pad_id),
        ]
        if len(negatives):
            padded.append(pad([self.item_tokens[n] for n in negatives], pad_id))
        if batches is self.train_batches:
            self.tokens += sum(int(mask.sum()) for _, mask in padded)
        with self.runtime.autocast():
            vectors = forward(*[(ids.to(dev), mask.to(dev)) for ids, mask in padded])
        candidates = torch.as_tensor(np.concatenate([positives, negatives]), device=dev)
        return contrastive_loss(
            vectors[0],
            torch.cat(vectors[1:]),
            torch.as_tensor(positives, device=dev),
            candidates,
            self.knobs.temperature,
        )

    def loss(self, forward: torch.nn.Module, step: int) -> torch.Tensor:
        size = len(self.train_batches.examples)
        index = shard(
            batch_order(size, self.knobs.batch_size, self.params.seed, step), self.runtime
        )
        return self.batch_loss(forward, self.train_batches, index.numpy())

    def validator(self) -> Callable[[torch.nn.Module], float] | None:
        valid = self.valid_batches
        if valid is None:
            return None
        size, n = self.knobs.batch_size, len(valid.examples)

        @torch.no_grad()
        def validation_loss(encoder: torch.nn.Module) -> float:
            encoder.eval()
            losses = [
                self.batch_loss(encoder, valid, np.arange(a, min(a + size, n))).item()
                for a in range(0, n, size)
            ]
            return float(np.mean(losses))

        return validation_loss

    def evaluate(self, model: TextEncoder, fitted: Fitted, runtime: Runtime) -> dict:
        cfg, products = self.knobs, self.tables["products"]
        self.encoder = BiEncoder(
            model,
            self.tokenizer,
            runtime.device,
            cfg.max_item_len,
            cfg.max_query_len,
            cfg.eval_batch_size,
        )
        self.encoder.index(products["product_id"].tolist(), self.item_texts)
        prior = attach_popularity(self.encoder, self.tables)
        self.per_query = bi_encoder_scores(self.encoder, self.tables, self.params)
        sources = pd.Series(self.train_batches.examples.sources).value_counts().to_dict()
        result = {
            "test": summarize(self.per_query),
            "popularity_prior": prior,
            "train": {"examples": sources, **training_figures(self, fitted, runtime)},
        }
        log.info("retriever on the test split: %s", result["test"])
        return result

    def save(self, model: TextEncoder, folder: Path, result: dict) -> None:
        cfg = self.knobs
        model.save(folder, self.tokenizer)
        meta = {
            "kind": "retriever",
            "max_item_len": cfg.max_item_len,
            "max_query_len": cfg.max_query_len,
            "history_items": cfg.history_items,
            "base_model": self.params.models.base,
            "metrics": result["test"],
        }
        write_json(folder / "shopflow.json", meta)
        self.encoder.save_index(folder / "index")
        for task, frame in self.per_query.items():
            write_parquet(frame, paths.evaluation_of(folder) / f"{task}.parquet")

    def summary(self, result: dict) -> dict[str, float]:
        return {f"{t}/{m}": v for t, values in result["test"].items() for m, v in values.items()}
