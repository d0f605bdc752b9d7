"""(query, product) to a relevance score: the cross-encoder that the reranker trains and serves.

One implementation of "score these products for this query", used by training, offline
evaluation and the service. Queries and product texts are tokenised separately, once, and
joined per pair with the tokenizer's own pair template ([CLS] q [SEP] p [SEP] for BERT), so a
catalogue is tokenised once however many queries it is scored against. The query is capped
at `max_query_len` tokens and the product text fills the rest of `max_len`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from shopflow.core.progress import Progress
from shopflow.models.base import quiet_transformers
from shopflow.models.device import autocast
from shopflow.models.tokens import length_batches

if TYPE_CHECKING:
    from transformers import PreTrainedModel

Segment = tuple[list[int], list[int]]  # special token ids and their token type ids


def pair_template(tokenizer) -> tuple[Segment, Segment, Segment, int, int]:
    """The special tokens a tokenizer puts before, between and after a pair of texts.

    Read off the tokenizer itself (BERT: [CLS] a [SEP] b [SEP], RoBERTa: <s> a </s></s> b </s>),
    so pairs can be joined from pieces tokenised once, for any model family.
    """
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    b = tokenizer("b", add_special_tokens=False)["input_ids"]
    pair = tokenizer("a", "b", return_token_type_ids=True)
    ids, types = pair["input_ids"], pair.get("token_type_ids") or [0] * len(pair["input_ids"])
    start = next(i for i in range(len(ids)) if ids[i : i + len(a)] == a)
    middle = next(i for i in range(start + len(a), len(ids)) if ids[i : i + len(b)] == b)
    return (
        (ids[:start], types[:start]),
        (ids[start + len(a) : middle], types[start + len(a) : middle]),
        (ids[middle + len(b) :], types[middle + len(b) :]),
        types[start],
        types[middle],
    )


class PairTokens:
    """Builds pre-tokenised (query, product) pairs for a tokenizer."""

    def __init__(self, tokenizer, max_len: int = 128, max_query_len: int = 24) -> None:
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.max_query_len = max_query_len
        self.template = pair_template(tokenizer)
        self.n_special = sum(len(ids) for ids, _ in self.template[:3])

    def pieces(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids without special tokens, truncated to what a pair could ever use."""
        return self.tokenizer(
            list(texts), add_special_tokens=False, truncation=True, max_length=self.max_len
        )["input_ids"]

    def join(self, query: Sequence[int], product: Sequence[int]) -> tuple[list[int], list[int]]:
        query = list(query[: self.max_query_len])
        product = list(product[: max(self.max_len - len(query) - self.n_special, 1)])
        (head, head_t), (mid, mid_t), (tail, tail_t), query_t, product_t = self.template
        ids = [*head, *query, *mid, *product, *tail]
        types = [*head_t, *[query_t] * len(query), *mid_t, *[product_t] * len(product), *tail_t]
        return ids, types

    def pad(
        self, pairs: Sequence[tuple[list[int], list[int]]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, token types, attention mask), right-padded to the longest pair."""
        width = max(len(ids) for ids, _ in pairs)
        ids = torch.full((len(pairs), width), self.tokenizer.pad_token_id, dtype=torch.long)
        types = torch.zeros((len(pairs), width), dtype=torch.long)
        mask = torch.zeros((len(pairs), width), dtype=torch.long)
        for i, (row, row_types) in enumerate(pairs):
            ids[i, : len(row)] = torch.as_tensor(row)
            types[i, : len(row)] = torch.as_tensor(row_types)
            mask[i, : len(row)] = 1
        return ids, types, mask


class CrossEncoderModule(torch.nn.Module):
    """A transformer with a one-logit head over [CLS], added to the retriever's score.

    score(q, d) = prior_weight · cos(q, d) + head(transformer([q; d])), where cos is the
    retriever's similarity and prior_weight starts at 1/temperature of the retriever: training
    only has to learn what joint attention over query and product adds. (A cross-encoder
    learned from scratch needs thousands of steps to catch up with the retriever, more than a
    CPU night affords.)

    A fresh head starts at the transformer's own random init, never at zero: a zero head passes
    no gradient to the body, and next to a prior of ~20·cos it barely moves in a night's steps,
    so the reranker would stay the retriever. A pooler the encoder lacks (a masked-LM or
    mean-pooling checkpoint has none) starts as the identity, so the head reads [CLS] rather
    than a random projection of it. The head, pooler and prior weight train at their own,
    larger learning rate (`head_parameters`, `reranker.head_lr`).
    """

    def __init__(self, model: PreTrainedModel, prior_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.prior_weight = torch.nn.Parameter(torch.tensor(float(prior_weight)))

    @classmethod
    def from_pretrained(cls, path: str | Path, prior_weight: float = 0.0) -> CrossEncoderModule:
        """From a reranker folder (its learned prior weight), or from a plain encoder: the
        head then starts at zero and the prior weight at `prior_weight`."""
        quiet_transformers()
        from transformers import AutoModelForSequenceClassification

        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=1, output_loading_info=True
        )
        meta = Path(path) / "shopflow.json"
        if meta.exists() and "prior_weight" in json.loads(meta.read_text()):
            prior_weight = json.loads(meta.read_text())["prior_weight"]
        base = getattr(model, model.base_model_prefix, None)
        pooler = getattr(base, "pooler", None)
        if pooler is not None and any(".pooler." in f".{key}" for key in info["missing_keys"]):
            with torch.no_grad():
                dense = pooler.dense
                dense.weight.copy_(torch.eye(*dense.weight.shape))
                dense.bias.zero_()
        return cls(model, prior_weight)

    def head_parameters(self) -> list[torch.nn.Parameter]:
        """The parts that start untrained: the prior weight, the pooler and the head."""
        fresh = [
            param
            for name, param in self.model.named_parameters()
            if {"classifier", "pooler"} & set(name.split("."))
        ]
        return [self.prior_weight, *fresh]

    def forward(
        self,
        ids: torch.Tensor,
        types: torch.Tensor,
        mask: torch.Tensor,
        prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.model(input_ids=ids, token_type_ids=types, attention_mask=mask)
        scores = out.logits[:, 0].float()
        return scores if prior is None else scores + self.prior_weight * prior

    def save(self, folder: Path, tokenizer) -> None:
        self.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


class CrossEncoder:
    """A trained cross-encoder folder, ready to score candidates."""

    def __init__(
        self,
        model: CrossEncoderModule,
        pairs: PairTokens,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.pairs = pairs
        self.batch_size = batch_size

    @classmethod
    def load(
        cls,
        folder: str | Path,
        device: str = "cpu",
        max_len: int = 128,
        max_query_len: int = 24,
        batch_size: int = 64,
    ) -> CrossEncoder:
        from transformers import AutoTokenizer

        pairs = PairTokens(AutoTokenizer.from_pretrained(str(folder)), max_len, max_query_len)
        return cls(CrossEncoderModule.from_pretrained(folder), pairs, device, batch_size)

    @torch.no_grad()
    def score_tokens(
        self,
        queries: Sequence[Sequence[int]],
        products: Sequence[Sequence[int]],
        priors: Sequence[float] | np.ndarray,
        progress: str | None = None,
    ) -> np.ndarray:
        """Scores of pre-tokenised pairs (`pieces` output) with their retriever similarities."""
        joined = [self.pairs.join(q, p) for q, p in zip(queries, products, strict=True)]
        prior = torch.as_tensor(np.asarray(priors, np.float32))
        out = np.zeros(len(joined), np.float32)
        meter = Progress(progress, len(joined), unit="pairs") if progress else None
        done = 0
        for index in length_batches([len(ids) for ids, _ in joined], self.batch_size):
            ids, types, mask = self.pairs.pad([joined[i] for i in index])
            with autocast(self.device):
                scores = self.model(
                    ids.to(self.device),
                    types.to(self.device),
                    mask.to(self.device),
                    prior[index].to(self.device),
                )
            out[index] = scores.float().cpu().numpy()
            done += len(index)
            if meter:
                meter.update(done)
        return out

    def score(self, query: str, texts: Sequence[str], priors: Sequence[float]) -> np.ndarray:
        """Relevance scores of product texts for one query (priors: retriever similarities)."""
        if not texts:
            return np.zeros(0, np.float32)
        query_ids = self.pairs.pieces([query])[0]
        return self.score_tokens([query_ids] * len(texts), self.pairs.pieces(texts), priors)
