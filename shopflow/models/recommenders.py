"""The recommenders a specialist builds first, fitted in seconds on interactions before a
cutoff: the baselines every trained recommender must beat, and the candidate sources of the
recommendation mix (`engine.recommend`).

- **popularity**: interactions per product (click 1, add to cart 2, purchase 3), each
  decayed by its age with a half-life (None: no decay), as a shop would rank best-sellers
  tonight;
- **buy again**: the customer's own products, by how much they did with each, decayed by
  the time since the last interaction; wholesale and grocery shops live on re-orders;
- **EASE** (Steck, WWW 2019): the closed-form linear item-to-item model on the customer ×
  product matrix, `B = I − P / diag(P)` with `P = (XᵀX + λI)⁻¹`. Its matrix is dense, so it
  covers the `max_items` most popular products (the rest score 0 from it);
- **item-kNN**: cosine similarity of products' customer vectors with a shrinkage term (rare
  products do not get similarity 1 from one shared customer), the top `neighbours` per
  product kept.

All score a batch of customers (`UserProfiles`) over one catalogue (`ItemIndex`): a dense
customers × products matrix, so the mix can take each source's top candidates in one
vectorised step. The two item-to-item models are kept as sparse products × products
weights (the `item_neighbours` largest per product), so a served model stays small.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

from shopflow.core.errors import StageInputError

log = logging.getLogger(__name__)

DAY = pd.Timedelta(days=1)


class ItemIndex:
    """The products recommendations are drawn from, in catalogue order."""

    def __init__(self, product_ids: Sequence[str]) -> None:
        self.ids = np.asarray([str(p) for p in product_ids])
        self.position = {pid: i for i, pid in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, product_ids: pd.Series) -> np.ndarray:
        """Positions of `product_ids` (-1 for products not in the catalogue)."""
        return product_ids.map(self.position).fillna(-1).to_numpy(np.int64)


def decay(ages_days: np.ndarray, half_life_days: float | None) -> np.ndarray:
    """0.5 ** (age / half-life): 1 for an interaction now, ½ one half-life ago (1 without)."""
    if half_life_days is None:
        return np.ones(len(ages_days), np.float64)
    return np.power(0.5, np.clip(ages_days, 0, None) / half_life_days)


@dataclass
class UserProfiles:
    """A batch of customers as the recommenders read them: what each did with each product
    before the cutoff (`as_of`), as sparse customers × products matrices."""

    users: list[str]
    seen: sparse.csr_matrix  # 1 where the customer interacted with the product
    weight: sparse.csr_matrix  # summed interaction weight
    purchases: sparse.csr_matrix  # purchases
    days_since: sparse.csr_matrix  # days from the last interaction to `as_of` (+1: 0 is absent)
    first_days_since: sparse.csr_matrix  # days from the first interaction to `as_of` (+1)

    @classmethod
    def of(
        cls, user_items: pd.DataFrame, users: Sequence[str], index: ItemIndex, as_of: pd.Timestamp
    ) -> UserProfiles:
        """Profiles of `users` from a `data.profiles.user_items` table (other customers'
        rows and products outside the catalogue are ignored)."""
        row_of = {u: i for i, u in enumerate(users)}
        rows = user_items["user_key"].map(row_of)
        cols = index.positions(user_items["product_id"])
        keep = rows.notna().to_numpy() & (cols >= 0)
        table = user_items[keep]
        r, c = rows[keep].to_numpy(np.int64), cols[keep]
        shape = (len(users), len(index))

        def matrix(values: np.ndarray) -> sparse.csr_matrix:
            built = sparse.csr_matrix((np.asarray(values, np.float32), (r, c)), shape=shape)
            built.eliminate_zeros()  # a product clicked, never bought: no purchase entry
            return built

        since = (as_of - table["last_ts"]) / DAY
        first = (as_of - table["first_ts"]) / DAY
        return cls(
            list(users),
            matrix(np.ones(len(table))),
            matrix(table["weight"].to_numpy()),
            matrix(table["purchases"].to_numpy()),
            matrix(since.to_numpy(float).clip(0) + 1),
            matrix(first.to_numpy(float).clip(0) + 1),
        )

    def __len__(self) -> int:
        return len(self.users)


@dataclass
class Popularity:
    """Decayed interaction weight per product."""

    half_life_days: float | None
    scores: np.ndarray

    @classmethod
    def fit(
        cls, acts: pd.DataFrame, index: ItemIndex, as_of: pd.Timestamp, half_life_days: float | None
    ) -> Popularity:
        at = index.positions(acts["product_id"])
        ages = ((as_of - acts["ts"]) / DAY).to_numpy(float)
        weights = acts["weight"].to_numpy(float) * decay(ages, half_life_days)
        keep = at >= 0
        scores = np.bincount(at[keep], weights=weights[keep], minlength=len(index))
        return cls(half_life_days, scores.astype(np.float32))

    def score(self, profiles: UserProfiles) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(profiles), len(self.scores))).copy()


@dataclass
class BuyAgain:
    """The customer's own products: interaction weight × decay of the time since the last."""

    half_life_days: float | None

    def score(self, profiles: UserProfiles) -> np.ndarray:
        weight = profiles.weight.tocoo()
        since = profiles.days_since.tocsr()[weight.row, weight.col].A1 - 1
        values = weight.data * decay(since, self.half_life_days)
        out = np.zeros(profiles.weight.shape, np.float32)
        out[weight.row, weight.col] = values
        return out


@dataclass
class ItemToItem:
    """Products × products weights: a customer's scores are the sum of the rows of the
    products they interacted with (EASE or item-kNN)."""

    kind: str  # ease | item_knn
    knob: float  # EASE's λ, or item-kNN's neighbours
    weights: sparse.csr_matrix

    def score(self, profiles: UserProfiles) -> np.ndarray:
        return np.asarray((profiles.seen @ self.weights).todense(), np.float32)

    @staticmethod
    def customers_by_products(acts: pd.DataFrame, index: ItemIndex) -> sparse.csr_matrix:
        """Binary customers × products matrix of who interacted with what."""
        at = index.positions(acts["product_id"])
        keep = at >= 0
        users, rows = np.unique(acts["user_key"].to_numpy()[keep], return_inverse=True)
        matrix = sparse.csr_matrix(
            (np.ones(int(keep.sum()), np.float32), (rows, at[keep])), shape=(len(users), len(index))
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    @classmethod
    def ease(
        cls, acts: pd.DataFrame, index: ItemIndex, l2: float, max_items: int, neighbours: int
    ) -> ItemToItem:
        """EASE over the `max_items` products most customers interacted with."""
        from scipy import linalg

        started = time.perf_counter()
        x = cls.customers_by_products(acts, index)
        counts = np.asarray(x.sum(axis=0)).ravel()
        covered = np.flatnonzero(counts > 0)
        if len(covered) > max_items:
            covered = np.sort(covered[np.argsort(-counts[covered], kind="stable")[:max_items]])
        xs = x[:, covered]
        gram = (xs.T @ xs).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += l2
        inverse = linalg.inv(gram, overwrite_a=True, check_finite=False)
        b = -inverse / np.diag(inverse)
        b[np.diag_indices_from(b)] = 0.0
        weights = _keep_largest(b, neighbours)
        full = _embed(weights, covered, len(index))
        log.debug(
            "EASE λ=%g over %d products: %.1fs", l2, len(covered), time.perf_counter() - started
        )
        return cls("ease", l2, full)

    @classmethod
    def knn(
        cls, acts: pd.DataFrame, index: ItemIndex, neighbours: int, shrink: float
    ) -> ItemToItem:
        """Shrunk cosine similarity, the `neighbours` most similar products per product."""
        x = cls.customers_by_products(acts, index).tocsc()
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        co = (x.T @ x).tocoo()
        keep = co.row != co.col
        rows, cols, counts = co.row[keep], co.col[keep], co.data[keep]
        similarity = counts / (norms[rows] * norms[cols] + shrink)
        matrix = sparse.csr_matrix((similarity, (rows, cols)), shape=(len(index), len(index)))
        return cls("item_knn", float(neighbours), _top_per_row(matrix, neighbours))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        sparse.save_npz(folder / f"{self.kind}.npz", self.weights, compressed=True)

    @classmethod
    def load(cls, folder: Path, kind: str, knob: float) -> ItemToItem:
        path = folder / f"{kind}.npz"
        if not path.exists():
            raise StageInputError(f"{path}: missing; re-run the recommender stage")
        return cls(kind, knob, sparse.load_npz(path).tocsr())


def _keep_largest(dense: np.ndarray, per_row: int) -> sparse.csr_matrix:
    """The `per_row` largest entries of each row of a dense matrix, as a sparse one."""
    n = dense.shape[1]
    if per_row >= n:
        return sparse.csr_matrix(dense.astype(np.float32))
    cols = np.argpartition(-dense, per_row - 1, axis=1)[:, :per_row]
    rows = np.repeat(np.arange(dense.shape[0]), per_row)
    values = np.take_along_axis(dense, cols, axis=1).ravel().astype(np.float32)
    return sparse.csr_matrix((values, (rows, cols.ravel())), shape=dense.shape)


def _top_per_row(matrix: sparse.csr_matrix, per_row: int) -> sparse.csr_matrix:
    """The `per_row` largest stored entries of each row of a sparse matrix."""
    matrix = matrix.tocsr()
    rows, cols, values = [], [], []
    for i in range(matrix.shape[0]):
        start, end = matrix.indptr[i], matrix.indptr[i + 1]
        data, idx = matrix.data[start:end], matrix.indices[start:end]
        if len(data) > per_row:
            top = np.argpartition(-data, per_row - 1)[:per_row]
            data, idx = data[top], idx[top]
        rows.append(np.full(len(data), i))
        cols.append(idx)
        values.append(data)
    if not rows:
        return sparse.csr_matrix(matrix.shape, dtype=np.float32)
    return sparse.csr_matrix(
        (np.concatenate(values).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
        shape=matrix.shape,
    )


def _embed(weights: sparse.csr_matrix, covered: np.ndarray, n: int) -> sparse.csr_matrix:
    """Weights over the `covered` products placed in an n × n matrix."""
    coo = weights.tocoo()
    return sparse.csr_matrix((coo.data, (covered[coo.row], covered[coo.col])), shape=(n, n))
