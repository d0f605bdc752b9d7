"""Text to vectors: the bi-encoder the retriever stage trains, evaluates and serves with.

One implementation of "embed this text", used by the zero-shot baseline, the retriever's
training and evaluation, the drift probe and the service, so they cannot disagree. Embeddings
are the mean of the transformer's token states over real tokens, L2-normalised:
all-MiniLM-L6-v2's own recipe, so the packaged model is used exactly as it was trained, and a
plain transformer folder (the pretrain-adapt output) gets the same pooling.

`TextEncoder` is the trainable module (both towers); `BiEncoder` is a trained one ready to
embed queries and search a catalogue it has indexed. Search is an exact inner product: on
catalogues of tens of thousands it is faster than building an ANN index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from shopflow.core.config import ModelsConfig
from shopflow.core.errors import ConfigError
from shopflow.core.progress import Progress
from shopflow.models.base import quiet_transformers, require_model, resolve_base_model
from shopflow.models.device import autocast
from shopflow.models.tokens import length_batches, pad, tokenize
from shopflow.models.vector_index import exact_top_k

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


class TextEncoder(torch.nn.Module):
    """Mean-pooled, L2-normalised embeddings from a transformer; both retriever towers."""

    def __init__(self, transformer: PreTrainedModel) -> None:
        super().__init__()
        self.transformer = transformer

    @classmethod
    def from_pretrained(cls, path: str | Path) -> TextEncoder:
        quiet_transformers()
        from transformers import AutoModel

        transformer = AutoModel.from_pretrained(str(path))
        if getattr(transformer, "pooler", None) is not None:
            transformer.pooler = None  # unused by mean pooling; DDP requires every param used
        return cls(transformer)

    def train_top_layers(self, layers: int | None) -> int:
        """Freeze the token embeddings and every transformer layer below the top `layers`
        (None: all layers train); the number of weights left to train. Private training
        trains fewer weights: less work per customer and less noise (docs/privacy.md)."""
        stack = getattr(getattr(self.transformer, "encoder", None), "layer", None)
        if not isinstance(stack, torch.nn.ModuleList):
            raise ConfigError(
                f"privacy.dp.trained_layers: {type(self.transformer).__name__} has no "
                "encoder.layer stack (a BERT-family encoder has): set it to null"
            )
        if layers is not None and layers > len(stack):
            raise ConfigError(
                f"privacy.dp.trained_layers {layers}: the base model has {len(stack)} layers"
            )
        self.transformer.requires_grad_(False)
        for layer in stack[len(stack) - (layers or len(stack)) :]:
            layer.requires_grad_(True)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @property
    def dim(self) -> int:
        return int(self.transformer.config.hidden_size)

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def forward(self, *batches: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
        """Embed several padded batches in one call (one forward per step, as DDP expects)."""
        return [self.embed(ids, mask) for ids, mask in batches]

    def save(self, folder: Path, tokenizer) -> None:
        self.transformer.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


PRIOR = "item_prior.npy"  # in a saved index: the products' popularity prior


class BiEncoder:
    """A trained (or zero-shot) bi-encoder folder, ready to embed queries and products."""

    def __init__(
        self,
        model: TextEncoder,
        tokenizer,
        device: str | torch.device = "cpu",
        max_len: int = 64,
        query_max_len: int = 48,
        batch_size: int = 128,
    ) -> None:
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.model = model.to(self.device).eval()
        self.max_len = max_len
        self.query_max_len = query_max_len
        self.batch_size = batch_size
        self.item_ids: np.ndarray = np.asarray([], dtype=object)
        self.dim = model.dim
        self.item_vectors = np.zeros((0, self.dim), np.float32)
        # the training split's popularity per product, in [0, 1]: a feature ranker feature
        self.item_prior: np.ndarray | None = None

    def index(self, item_ids: Sequence[str], texts: Sequence[str]) -> None:
        """Embed the catalogue once; `search` then ranks all of it."""
        started = time.perf_counter()
        self.item_vectors = self.encode(texts, progress="embedding products")
        self.item_ids = np.asarray(item_ids)
        log.info("embedded %d products in %.1fs", len(texts), time.perf_counter() - started)

    def save_index(self, folder: Path) -> None:
        """The catalogue's embeddings next to the model, so serving never re-embeds it."""
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "item_vectors.npy", self.item_vectors)
        (folder / "item_ids.txt").write_text("\n".join(map(str, self.item_ids)) + "\n")
        if self.item_prior is not None:
            np.save(folder / PRIOR, self.item_prior.astype(np.float32))

    def load_index(self, folder: Path, item_ids: Sequence[str] | None = None) -> bool:
        """Load a saved index; with `item_ids`, only if it covers exactly those products."""
        ids_path, vectors_path = folder / "item_ids.txt", folder / "item_vectors.npy"
        if not (ids_path.exists() and vectors_path.exists()):
            return False
        saved = ids_path.read_text().splitlines()
        if item_ids is not None and saved != [str(i) for i in item_ids]:
            return False
        self.item_ids, self.item_vectors = np.asarray(saved), np.load(vectors_path)
        if (folder / PRIOR).exists():
            self.item_prior = np.load(folder / PRIOR)
        return True

    @staticmethod
    def has_saved_prior(folder: Path) -> bool:
        """Was a popularity prior saved with this index (a shop with clicks or purchases)?"""
        return (folder / PRIOR).exists()

    def search(self, query_texts: Sequence[str], k: int = 100) -> list[list[tuple[str, float]]]:
        """Top-k products per query text (exact inner product)."""
        queries = self.encode(query_texts, "embedding queries", self.query_max_len)
        return top_k(queries, self.item_vectors, self.item_ids, k)

    @classmethod
    def load(
        cls,
        folder: str | Path,
        device: str | torch.device = "cpu",
        max_len: int = 64,
        query_max_len: int = 48,
        batch_size: int = 128,
    ) -> BiEncoder:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = TextEncoder.from_pretrained(folder)
        return cls(model, tokenizer, device, max_len, query_max_len, batch_size)

    @classmethod
    def load_indexed(
        cls,
        folder: Path,
        item_ids: Sequence[str],
        texts: Sequence[str],
        device: str | torch.device = "cpu",
        max_len: int = 64,
        query_max_len: int = 48,
        batch_size: int = 128,
    ) -> BiEncoder:
        """A trained retriever with the catalogue's vectors: the ones saved beside it when
        they are of exactly these products, else embedded now."""
        require_model(folder, "retriever")
        encoder = cls.load(folder, device, max_len, query_max_len, batch_size)
        if not encoder.load_index(folder / "index", list(item_ids)):
            encoder.index(list(item_ids), texts)
        return encoder

    @torch.no_grad()
    def encode(
        self, texts: Sequence[str], progress: str | None = None, max_len: int | None = None
    ) -> np.ndarray:
        """float32 unit vectors, one row per text, in the order given."""
        rows = tokenize(self.tokenizer, texts, max_len or self.max_len)
        out = np.zeros((len(rows), self.dim), np.float32)
        meter = Progress(progress, len(rows), unit="texts") if progress else None
        done = 0
        for index in length_batches([len(r) for r in rows], self.batch_size):
            ids, mask = pad([rows[i] for i in index], self.tokenizer.pad_token_id)
            with autocast(self.device):
                vectors = self.model.embed(ids.to(self.device), mask.to(self.device))
            out[index] = vectors.cpu().numpy()
            done += len(index)
            if meter:
                meter.update(done)
        return out


def base_bi_encoder(models: ModelsConfig, max_len: int = 64) -> BiEncoder:
    """The base encoder (`models.base`), untrained on the shop, as a bi-encoder on the CPU:
    the zero-shot baseline and the drift probe of the baseline champion."""
    return BiEncoder.load(resolve_base_model(models.base, models.allow_download), max_len=max_len)


def top_k(
    queries: np.ndarray, items: np.ndarray, item_ids: Sequence[str] | np.ndarray, k: int = 100
) -> list[list[tuple[str, float]]]:
    """Exact top-k by inner product as (item id, score)."""
    ids = np.asarray(item_ids)
    hits = exact_top_k(queries, items, k)
    return [[(ids[i], s) for i, s in row] for row in hits]
