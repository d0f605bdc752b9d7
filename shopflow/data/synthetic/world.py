"""The synthetic shop's fixed world: catalogue, brands, users and the ground truth.

Everything here is a pure function of (seed, SyntheticConfig). The base catalogue and the
users are drawn from their own random streams, so switching drift knobs on never changes
them: a drifted run differs from a clean run only where the drift acts.

The ground truth (`relevance`) is what the judgments export and what the user model clicks
on: grade 3 when the product is of the intended leaf and matches every attribute the query
named, 2 when it matches at least half, 1 when it only shares the leaf or is a complement
(a coffee table for a sofa query), else 0.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from shopflow.core.config import SyntheticConfig
from shopflow.data.synthetic import vocabulary as voc
from shopflow.data.synthetic.text import describe_products

ATTRACTIVENESS = np.array([0.03, 0.12, 0.35, 0.75])  # P(click | examined, grade)
N_BRANDS_PER_TOP = 12
PRICE_DRIFT_TOPS = ("Electronics", "Furniture")


@dataclass(frozen=True)
class LeafInfo:
    index: int
    top: int
    top_name: str
    leaf: voc.Leaf
    is_new_category: bool

    @property
    def path(self) -> str:
        return f"{self.top_name} > {self.leaf.name}"


def _stream(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


class ShopWorld:
    """Catalogue, users and ground truth of one seeded synthetic shop."""

    def __init__(self, cfg: SyntheticConfig, seed: int) -> None:
        self.cfg = cfg
        self.seed = seed
        tops = list(voc.TAXONOMY)
        self.with_new_category = cfg.drift.start is not None and cfg.drift.new_category > 0
        self.tops = [*tops, voc.NEW_CATEGORY]
        self.leaves: list[LeafInfo] = []
        for t, top in enumerate(self.tops):
            for leaf in top.leaves:
                self.leaves.append(LeafInfo(len(self.leaves), t, top.name, leaf, t == len(tops)))
        self.n_base_tops = len(tops)
        self.leaf_by_name = {info.leaf.name: info.index for info in self.leaves}
        self.top_leaves = [
            np.array([i.index for i in self.leaves if i.top == t]) for t in range(len(self.tops))
        ]
        self.complements = [
            np.array([self.leaf_by_name[c] for c in info.leaf.complements], dtype=int)
            for info in self.leaves
        ]
        self._build_brands()
        self._build_products()
        self._build_users()

    # ----------------------------------------------------------------------------- brands
    def _build_brands(self) -> None:
        rng = _stream(self.seed, 1)
        names: list[str] = []
        premium: list[float] = []
        self.brand_top: list[int] = []
        for t, top in enumerate(self.tops):
            combos = [(p, s) for p in voc.BRAND_PREFIXES for s in voc.BRAND_SUFFIXES]
            picks = rng.choice(len(combos), N_BRANDS_PER_TOP, replace=False)
            for k in picks:
                prefix, suffix = combos[k]
                names.append((prefix + top.brand_stem + suffix).capitalize())
                premium.append(float(rng.lognormal(0, 0.25)))
                self.brand_top.append(t)
        self.brand_names = np.array(names)
        self.brand_premium = np.array(premium)
        zipf = 1 / np.arange(1, N_BRANDS_PER_TOP + 1) ** 0.8
        self.brand_share = zipf / zipf.sum()

    # --------------------------------------------------------------------------- products
    def _draw_products(self, rng: np.random.Generator, n: int, leaf_ids: np.ndarray) -> dict:
        leaf_weights = rng.dirichlet(np.full(len(leaf_ids), 6.0))
        leaf = np.sort(rng.choice(leaf_ids, n, p=leaf_weights))
        top = np.array([self.leaves[i].top for i in leaf])
        brand = top * N_BRANDS_PER_TOP + rng.choice(N_BRANDS_PER_TOP, n, p=self.brand_share)
        has = {
            kind: np.array([kind in self.leaves[i].leaf.attributes for i in leaf])
            for kind in ("colour", "material", "size")
        }
        colour = np.where(has["colour"], rng.integers(0, len(voc.COLOURS), n), -1)
        material = np.where(has["material"], rng.integers(0, len(voc.MATERIALS), n), -1)
        size = np.where(has["size"], rng.integers(0, len(voc.SIZES), n), -1)
        median = np.array([self.leaves[i].leaf.price for i in leaf])
        price = median * rng.lognormal(0, 0.35, n) * self.brand_premium[brand]
        price = np.maximum(np.round(price) - 0.01, 0.99)
        popularity = rng.lognormal(0, 1.1, n)
        return {
            "leaf": leaf,
            "brand": brand,
            "colour": colour,
            "material": material,
            "size": size,
            "base_price": price,
            "popularity": popularity,
            "text_seed": rng.integers(0, 2**31, n),
        }

    def _build_products(self) -> None:
        cfg = self.cfg
        base_leaves = np.array([i.index for i in self.leaves if not i.is_new_category])
        rng = _stream(self.seed, 2)
        arrays = self._draw_products(rng, cfg.n_products, base_leaves)
        start = cfg.start_date.toordinal()
        n = cfg.n_products
        # 85% launched in the year before the world starts, 15% during its first 120 days.
        old = rng.random(n) < 0.85
        launch = np.where(
            old, start - rng.integers(1, 366, n), start + rng.integers(0, 120, n)
        ).astype(np.int64)
        arrays["launch"] = launch
        if self.with_new_category:
            new_leaves = np.array([i.index for i in self.leaves if i.is_new_category])
            n_new = max(len(new_leaves) * 4, n // 20)
            extra = self._draw_products(_stream(self.seed, 3), n_new, new_leaves)
            assert cfg.drift.start is not None  # with_new_category says so
            extra["launch"] = np.full(n_new, cfg.drift.start.toordinal(), dtype=np.int64)
            arrays = {k: np.concatenate([arrays[k], extra[k]]) for k in arrays}
        order = np.argsort(arrays["leaf"], kind="stable")
        self.p = {k: v[order] for k, v in arrays.items()}
        self.n = len(order)
        self.product_ids = np.array([f"sp-{i:07d}" for i in range(self.n)])
        self.id_index = {pid: i for i, pid in enumerate(self.product_ids)}
        leaf = self.p["leaf"]
        self.leaf_start = np.searchsorted(leaf, np.arange(len(self.leaves)), side="left")
        self.leaf_end = np.searchsorted(leaf, np.arange(len(self.leaves)), side="right")
        self.p["top"] = np.array([self.leaves[i].top for i in leaf]) if self.n else leaf
        self.leaf_median = np.array([i.leaf.price for i in self.leaves])

    @cached_property
    def texts(self) -> tuple[list[str], list[str], list[str]]:
        """Titles, descriptions and title colour words, built lazily (the slow, per-row part)."""
        return describe_products(self)

    # ------------------------------------------------------------------------------ users
    def _build_users(self) -> None:
        rng = _stream(self.seed, 4)
        n, n_tops = self.cfg.n_users, self.n_base_tops
        self.user_ids = np.array([f"user-{i:06d}" for i in range(n)])
        self.u_affinity = rng.dirichlet(np.full(n_tops, 0.35), n)
        self.u_brand = np.stack(
            [
                t * N_BRANDS_PER_TOP + rng.choice(N_BRANDS_PER_TOP, n, p=self.brand_share)
                for t in range(len(self.tops))
            ],
            axis=1,
        )
        self.u_loyalty = rng.beta(2, 4, n)
        self.u_price_sensitivity = rng.lognormal(0, 0.5, n)
        activity = rng.gamma(1.2, 1.0, n)
        self.u_activity = activity / activity.sum()
        top = self.sample_top(rng, self.u_affinity)
        self.u_anchor = self.top_leaves_pick(rng, top)

    # ------------------------------------------------------------------------ sampling
    @staticmethod
    def sample_top(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
        """One category index per row of a (rows × categories) weight matrix."""
        cum = np.cumsum(weights, axis=1)
        u = rng.random(len(weights)) * cum[:, -1]
        return (cum < u[:, None]).sum(axis=1)

    def top_leaves_pick(self, rng: np.random.Generator, top: np.ndarray) -> np.ndarray:
        sizes = np.array([len(x) for x in self.top_leaves])
        first = np.array([x[0] for x in self.top_leaves])
        return first[top] + (rng.random(len(top)) * sizes[top]).astype(int)

    # -------------------------------------------------------------------- time-dependent
    def drift_active(self, day: dt.date) -> bool:
        start = self.cfg.drift.start
        return start is not None and day >= start

    def launched(self, day: dt.date) -> np.ndarray:
        return self.p["launch"] <= day.toordinal()

    def prices(self, day: dt.date) -> np.ndarray:
        price = self.p["base_price"].copy()
        change = self.cfg.drift.price_change
        if change and self.drift_active(day):
            tops = [t for t, top in enumerate(self.tops) if top.name in PRICE_DRIFT_TOPS]
            hit = np.isin(self.p["top"], tops)
            price[hit] = np.maximum(np.round(price[hit] * (1 + change)) - 0.01, 0.99)
        return price

    # ---------------------------------------------------------------------- ground truth
    def relevance(
        self,
        q_leaf: np.ndarray,
        q_colour: np.ndarray,
        q_material: np.ndarray,
        q_brand: np.ndarray,
        products: np.ndarray,
    ) -> np.ndarray:
        """Graded relevance (0..3) of product indices `products` (queries × k) for each intent."""
        p = self.p
        q = [x[:, None] for x in (q_leaf, q_colour, q_material, q_brand)]
        leaf = p["leaf"][products]
        named = [
            (q[1], p["colour"][products]),
            (q[2], p["material"][products]),
            (q[3], p["brand"][products]),
        ]
        n_named = sum((qa >= 0).astype(int) for qa, _ in named)
        n_match = sum(((qa >= 0) & (qa == pa)).astype(int) for qa, pa in named)
        same_leaf = leaf == q[0]
        grade_in_leaf = np.where(n_match == n_named, 3, np.where(2 * n_match >= n_named, 2, 1))
        complement = np.zeros_like(same_leaf)
        for leaf_id in np.unique(q_leaf):
            comps = self.complements[leaf_id]
            if len(comps):
                rows = q_leaf == leaf_id
                complement[rows] = np.isin(leaf[rows], comps)
        return np.where(same_leaf, grade_in_leaf, np.where(complement, 1, 0)).astype(np.int8)

    def attractiveness(
        self, grade: np.ndarray, users: np.ndarray, products: np.ndarray, day: dt.date
    ) -> np.ndarray:
        """P(click | examined): grade, softened by brand loyalty and price sensitivity."""
        attract = ATTRACTIVENESS[grade]
        top = self.p["top"][products]
        loyal = self.u_brand[users[:, None], top] == self.p["brand"][products]
        loyalty = self.u_loyalty[users][:, None]
        attract = np.where(loyal, 1 - (1 - attract) * (1 - 0.5 * loyalty), attract)
        ratio = self.prices(day)[products] / self.leaf_median[self.p["leaf"][products]]
        sensitivity = self.u_price_sensitivity[users][:, None]
        return attract * np.exp(-0.6 * sensitivity * np.maximum(0.0, np.log(ratio)))
