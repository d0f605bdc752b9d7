"""BM25F over a product's fields: the lexical baseline every model must beat, the retriever's
source of hard negatives, and the lexical half of hybrid retrieval (`engine.fusion`).

A specialist's first search baseline is not BM25 with library defaults over one blob of
text: it is stemmed, its `k1` and `b` are tuned, and a title match counts for more than a
match in the description. So:

- **Tokens**: bm25s's tokenizer (lower-cased words, English stop words removed) with a
  Snowball stemmer (PyStemmer), so "tables" matches "table".
- **Fields**: title, brand, category, attributes and description are kept apart and
  weighted (BM25F, Robertson & Zaragoza 2009): each field's term frequency is normalised by
  that field's length, the weighted sum is saturated once by `k1`. A weight of 0 leaves a
  field out.
- **Settings** (`k1`, `b`, the field weights) are chosen on the judged non-test queries by
  `evaluation.bm25_tuning` and saved beside the baselines, so that every later stage, the
  A/B evaluation and the service score with the same ones.

bm25s indexes one text per document and has no fields, so the scoring is written here on
scipy's sparse matrices: the score of every (term, product) is precomputed once (as bm25s
does), a batch of queries is one sparse product, and a product's score for a query is a
sum over the query's terms.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from shopflow.core.artifacts import read_json, write_json
from shopflow.core.config import Bm25Config
from shopflow.core.errors import ConfigError, StageInputError
from shopflow.data.features import PRODUCT_FIELDS, product_fields

log = logging.getLogger(__name__)

SETTINGS = "settings.json"  # in a folder of saved BM25 settings (the baselines stage's bm25/)


@dataclass(frozen=True)
class Bm25Settings:
    """How BM25F scores: saturation `k1`, length normalisation `b`, a weight per field (0:
    not indexed) and the Snowball stemmer's language (None: no stemming). The defaults
    (every field alike, Lucene's k1 and b) are for settings saved before tuning existed."""

    k1: float = 1.2
    b: float = 0.75
    weights: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(PRODUCT_FIELDS, 1.0))
    stemmer: str | None = "english"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(PRODUCT_FIELDS))
        if unknown:
            raise ConfigError(f"bm25.weights: unknown field(s) {unknown} (known: {PRODUCT_FIELDS})")
        if not any(w > 0 for w in self.weights.values()):
            raise ConfigError("bm25.weights: at least one field needs a weight above 0")
        if self.k1 <= 0 or not 0 <= self.b <= 1:
            raise ConfigError(f"bm25: k1 must be > 0 and b in [0, 1], got {self.k1}, {self.b}")

    def as_dict(self) -> dict:
        return {**asdict(self), "weights": dict(self.weights)}

    @classmethod
    def from_dict(cls, raw: Mapping) -> Bm25Settings:
        return cls(
            k1=float(raw["k1"]),
            b=float(raw["b"]),
            weights={str(k): float(v) for k, v in raw["weights"].items()},
            stemmer=raw.get("stemmer"),
        )

    def save(self, folder: Path, info: Mapping | None = None) -> None:
        write_json(folder / SETTINGS, {**self.as_dict(), **(info or {})})

    @classmethod
    def load(cls, folder: Path) -> Bm25Settings:
        path = folder / SETTINGS
        if not path.exists():
            raise StageInputError(f"{path}: no BM25 settings; run the baselines stage first")
        try:
            return cls.from_dict(read_json(path))
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise StageInputError(f"{path}: not BM25 settings ({exc})") from None


# Words of one character too: sizes and dimensions ("1/2 in", "2 x 4") are much of what
# shoppers type. bm25s's default pattern drops them; keeping them measured +0.015 NDCG@10 on
# Home Depot's valid queries. English stop words ("a") still go.
TOKEN_PATTERN = r"(?u)\b\w+\b"


class Tokenizer:
    """bm25s's tokenizer (lower case, English stop words out) with a Snowball stemmer; each
    distinct word is stemmed once."""

    def __init__(self, stemmer: str | None) -> None:
        self.language = stemmer
        self._stem: Callable[[list[str]], list[str]] | None = None
        if stemmer:
            import Stemmer  # PyStemmer

            if stemmer not in Stemmer.algorithms():
                raise ConfigError(
                    f"bm25.stemmer: {stemmer!r} is not a Snowball language "
                    f"(known: {', '.join(Stemmer.algorithms())})"
                )
            self._stem = Stemmer.Stemmer(stemmer).stemWords

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets DEBUG on import
        return bm25s.tokenize(
            [t or "" for t in texts],
            stopwords="en",
            stemmer=self._stem,
            token_pattern=TOKEN_PATTERN,
            return_ids=False,
            show_progress=False,
        )


class Vocabulary:
    """Term → column; terms first met in queries are unknown (they match nothing)."""

    def __init__(self) -> None:
        self.column: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.column)

    def counts(self, docs: Sequence[Sequence[str]], grow: bool) -> sparse.csr_matrix:
        """Term counts per document (rows) over the vocabulary (columns)."""
        rows, cols = [], []
        for i, terms in enumerate(docs):
            for term in terms:
                col = self.column.get(term)
                if col is None:
                    if not grow:
                        continue
                    col = self.column[term] = len(self.column)
                rows.append(i)
                cols.append(col)
        data = np.ones(len(rows), np.float32)
        shape = (len(docs), len(self.column) if grow else max(len(self.column), 1))
        matrix = sparse.csr_matrix((data, (rows, cols)), shape=shape)
        matrix.sum_duplicates()
        return matrix


class Bm25Corpus:
    """A catalogue's fields tokenised once: each field's term counts and lengths. Scoring
    with other settings (`BM25.over`) reuses it, which is what makes tuning cheap. Only the
    stemmer is fixed at tokenisation."""

    def __init__(
        self, product_ids: Sequence[str], fields: Mapping[str, Sequence[str]], stemmer: str | None
    ) -> None:
        started = time.perf_counter()
        self.product_ids = np.asarray([str(p) for p in product_ids])
        self.tokenizer = Tokenizer(stemmer)
        self.vocabulary = Vocabulary()
        tokens = {name: self.tokenizer(texts) for name, texts in fields.items()}
        counts = {name: self.vocabulary.counts(docs, grow=True) for name, docs in tokens.items()}
        width = len(self.vocabulary)
        self.counts = {name: _widen(matrix, width) for name, matrix in counts.items()}
        self.lengths = {
            name: np.asarray(matrix.sum(axis=1)).ravel() for name, matrix in self.counts.items()
        }
        log.debug(
            "BM25 corpus: %d products, %d terms, fields %s (%.1fs)",
            len(self.product_ids),
            width,
            list(fields),
            time.perf_counter() - started,
        )

    @classmethod
    def of_products(cls, products: pd.DataFrame, stemmer: str | None) -> Bm25Corpus:
        return cls(products["product_id"], product_fields(products), stemmer)

    def queries(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Query term counts over this corpus's vocabulary (unknown terms dropped)."""
        return _widen(
            self.vocabulary.counts(self.tokenizer(texts), grow=False), len(self.vocabulary)
        )


def _widen(matrix: sparse.csr_matrix, width: int) -> sparse.csr_matrix:
    """`matrix` with `width` columns (a field indexed before later fields added terms)."""
    matrix = matrix.tocsr()
    if matrix.shape[1] == width:
        return matrix
    return sparse.csr_matrix((matrix.data, matrix.indices, matrix.indptr), (matrix.shape[0], width))


class BM25:
    """BM25F search over a catalogue's fields with the given settings."""

    def __init__(self, corpus: Bm25Corpus, settings: Bm25Settings) -> None:
        if settings.stemmer != corpus.tokenizer.language:
            raise ValueError("the settings' stemmer differs from the corpus's tokenisation")
        self.corpus = corpus
        self.settings = settings
        self.product_ids = corpus.product_ids
        self.position = {pid: i for i, pid in enumerate(self.product_ids)}
        b = settings.b
        fields = [f for f, w in settings.weights.items() if w > 0 and f in corpus.counts]
        n_docs = len(self.product_ids)
        pseudo_tf = sparse.csr_matrix((n_docs, len(corpus.vocabulary)), dtype=np.float32)
        per_field: dict[str, sparse.csr_matrix] = {}
        for name in fields:
            lengths = corpus.lengths[name]
            mean = lengths.mean() if lengths.size and lengths.mean() > 0 else 1.0
            norm = (1 - b + b * lengths / mean).astype(np.float32)
            normalised = sparse.diags(1 / np.maximum(norm, 1e-6)) @ corpus.counts[name]
            per_field[name] = normalised.tocsr()
            pseudo_tf = pseudo_tf + settings.weights[name] * per_field[name]
        df = np.asarray((pseudo_tf > 0).sum(axis=0)).ravel()
        self.idf = np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
        # term × product scores: rows are terms, so a query's terms are a few rows
        self.term_scores = self._saturate(pseudo_tf).T.tocsr()
        self.field_term_scores = {
            name: self._saturate(matrix).T.tocsr() for name, matrix in per_field.items()
        }

    def _saturate(self, tf: sparse.csr_matrix) -> sparse.csr_matrix:
        """idf(t) · tf / (k1 + tf) for every stored (product, term)."""
        tf = tf.tocsr().astype(np.float32)
        out = tf.copy()
        out.data = tf.data / (self.settings.k1 + tf.data)
        return (out @ sparse.diags(self.idf)).tocsr()

    @classmethod
    def of_products(cls, products: pd.DataFrame, settings: Bm25Settings) -> BM25:
        return cls(Bm25Corpus.of_products(products, settings.stemmer), settings)

    @classmethod
    def of_fields(
        cls,
        product_ids: Sequence[str],
        fields: Mapping[str, Sequence[str]],
        settings: Bm25Settings,
    ) -> BM25:
        return cls(Bm25Corpus(product_ids, fields, settings.stemmer), settings)

    def over(self, settings: Bm25Settings) -> BM25:
        """The same corpus scored with other settings (same stemmer)."""
        return BM25(self.corpus, settings)

    def score_matrix(self, queries: Sequence[str]) -> sparse.csr_matrix:
        """Queries × products BM25F scores (sparse: products sharing no term are absent)."""
        return (self.corpus.queries(queries) @ self.term_scores).tocsr()

    def search(
        self, queries: Sequence[str], k: int = 100, allowed: np.ndarray | None = None
    ) -> list[list[tuple[str, float]]]:
        """The top k products per query with a positive score, among `allowed` (a boolean
        mask over the products) when given; ties broken by catalogue order."""
        scores = self.score_matrix(queries)
        out = []
        for i in range(scores.shape[0]):
            start, end = scores.indptr[i], scores.indptr[i + 1]
            docs, values = scores.indices[start:end], scores.data[start:end]
            keep = values > 0
            if allowed is not None:
                keep &= allowed[docs]
            docs, values = docs[keep], values[keep]
            docs, values = top_k(docs, values, k)
            out.append([(self.product_ids[d], float(v)) for d, v in zip(docs, values, strict=True)])
        return out

    def scores_of(self, query: str, product_ids: Sequence[str]) -> np.ndarray:
        """BM25F scores of the given products (in the index) for one query."""
        return self._scores_in(self.term_scores, query, product_ids)

    def field_scores_of(self, query: str, product_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Each indexed field's own BM25 score of the given products for one query: what
        the feature ranker reads beside the BM25F score (a field not indexed scores 0)."""
        return {
            name: (
                self._scores_in(self.field_term_scores[name], query, product_ids)
                if name in self.field_term_scores
                else np.zeros(len(product_ids), np.float64)
            )
            for name in PRODUCT_FIELDS
        }

    def _scores_in(
        self, matrix: sparse.csr_matrix, query: str, product_ids: Sequence[str]
    ) -> np.ndarray:
        counts = self.corpus.queries([query])
        if not counts.nnz:  # only stop words or unknown words: nothing matches
            return np.zeros(len(product_ids), np.float64)
        at = [self.position[p] for p in product_ids]
        rows = matrix[counts.indices][:, at]
        return np.asarray(counts.data @ rows.toarray(), np.float64).ravel()


def top_k(docs: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (doc, value) pairs, best first; equal values in catalogue order, also at
    the k-th place, so a list's top 10 is the top 10 of its top 100."""
    if len(docs) > k:
        kth = np.partition(values, len(values) - k)[len(values) - k]
        keep = values >= kth
        docs, values = docs[keep], values[keep]
    order = np.lexsort((docs, -values))[:k]
    return docs[order], values[order]


def configured(cfg: Bm25Config) -> Bm25Settings:
    """The settings params `bm25` starts from (the tuning's start; used as they are where
    nothing was tuned, e.g. by the drift probe of a baseline champion)."""
    weights = {str(name): float(weight) for name, weight in cfg.weights.items()}
    return Bm25Settings(k1=cfg.k1, b=cfg.b, weights=weights, stemmer=cfg.stemmer)
