"""Recommendations, the one implementation behind the baselines, the recommender stage's
evaluation, the A/B evaluation and the service.

A `Recommender` holds the catalogue (`ItemIndex`), what it knows about customers
(`data.profiles.user_items` at its snapshot time), the fitted sources
(`models.recommenders`: popularity, buy again, EASE, item-kNN; the retriever's user tower
when the engine lends it one) and what it serves (`RecommendSettings.serve`): one source, or
the mix, where each source's top `candidates` are reordered by a LightGBM ranker over the
sources' scores and ranks and what the customer did with each product. Lists never hold what
`data.profiles.excluded` leaves out, so offline numbers are of lists the service can serve.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from shopflow.core.artifacts import read_json, write_json, write_parquet
from shopflow.core.errors import StageInputError
from shopflow.data.features import history_texts
from shopflow.data.profiles import before, excluded, user_items
from shopflow.engine.recommend_features import Candidates, feature_names, features_of
from shopflow.models.bi_encoder import BiEncoder
from shopflow.models.feature_ranker import FeatureRanker
from shopflow.models.recommenders import (
    BuyAgain,
    ItemIndex,
    ItemToItem,
    Popularity,
    UserProfiles,
)

log = logging.getLogger(__name__)

BASELINE_SOURCES = ("popularity", "buy_again", "ease", "item_knn")
MIX = "mix"
SETTINGS = "settings.json"
USER_ITEMS = "user_items.parquet"
POPULARITY = "popularity.npy"
RANKER = "ranker"

# A user tower: for each customer, scores over the catalogue from their recent products.
Tower = Callable[[list[list[str]]], np.ndarray]


def user_tower(retriever: BiEncoder, titles: Mapping[str, str], history_items: int) -> Tower:
    """The retriever's query tower reading a customer's latest products' titles (no query),
    scored against its product vectors (in the recommender's catalogue order)."""

    def scores(histories: list[list[str]]) -> np.ndarray:
        texts = history_texts(histories, titles, history_items)
        vectors = retriever.encode(texts, max_len=retriever.query_max_len)
        return (vectors @ retriever.item_vectors.T).astype(np.float32)

    return scores


@dataclass(frozen=True)
class RecommendSettings:
    """What a recommender serves and the knobs its sources were fitted with."""

    exclude: str  # none | purchased | interacted (resolved from auto by prepare)
    serve: str  # a source name, or "mix"
    popularity_half_life_days: float | None = None
    buy_again_half_life_days: float | None = None
    ease_l2: float = 200.0
    ease_max_items: int = 5000
    knn_neighbours: int = 50
    knn_shrink: float = 100.0
    item_neighbours: int = 200
    candidates: int = 50
    mix_sources: tuple[str, ...] = ()  # the sources whose candidates the ranker reorders
    history_items: int = 3  # recent products the user tower reads

    def needs(self) -> set[str]:
        """The sources this recommender must fit: what it serves, the mix's sources, and
        popularity (every list falls back on it)."""
        return ({self.serve} - {MIX}) | set(self.mix_sources) | {"popularity"}

    def as_dict(self) -> dict:
        return {**asdict(self), "mix_sources": list(self.mix_sources)}

    @classmethod
    def from_dict(cls, raw: dict) -> RecommendSettings:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in raw.items() if k in known}
        values["mix_sources"] = tuple(values.get("mix_sources", ()))
        return cls(**values)


def write_marker(folder: Path, reason: str) -> None:
    """A recommender folder saying there is nothing to recommend from, and why."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / SETTINGS, {"kind": "recommender", "serve": None, "reason": reason})


@dataclass
class Recommender:
    """Sources fitted on interactions before `as_of`, profiles at `as_of`, and what to serve."""

    index: ItemIndex
    settings: RecommendSettings
    as_of: pd.Timestamp
    user_items: pd.DataFrame
    popularity: Popularity
    item_to_item: dict[str, ItemToItem] = field(default_factory=dict)
    ranker: FeatureRanker | None = None
    tower: Tower | None = None
    _known: set[str] | None = field(default=None, repr=False)

    @classmethod
    def fit(
        cls,
        acts: pd.DataFrame,
        index: ItemIndex,
        as_of: pd.Timestamp,
        settings: RecommendSettings,
        ranker: FeatureRanker | None = None,
        tower: Tower | None = None,
    ) -> Recommender:
        """Fit what `settings` needs on the interactions before `as_of`."""
        known = before(acts, as_of)
        need = settings.needs()
        pairs: dict[str, ItemToItem] = {}
        if "ease" in need:
            pairs["ease"] = ItemToItem.ease(
                known, index, settings.ease_l2, settings.ease_max_items, settings.item_neighbours
            )
        if "item_knn" in need:
            pairs["item_knn"] = ItemToItem.knn(
                known, index, settings.knn_neighbours, settings.knn_shrink
            )
        return cls(
            index,
            settings,
            as_of,
            user_items(known),
            Popularity.fit(known, index, as_of, settings.popularity_half_life_days),
            pairs,
            ranker,
            tower,
        )

    def refit(
        self,
        acts: pd.DataFrame,
        index: ItemIndex,
        as_of: pd.Timestamp,
        tower: Tower | None = None,
    ) -> Recommender:
        """The same settings and ranker fitted on other interactions (a champion measured
        on tonight's data, at the test split's start)."""
        return Recommender.fit(acts, index, as_of, self.settings, self.ranker, tower)

    def with_settings(self, settings: RecommendSettings) -> Recommender:
        """The same fitted sources serving otherwise (what the mix's choice compares)."""
        return replace(self, settings=settings)

    # -- who is asked for ---------------------------------------------------------------

    def knows(self, user_key: str) -> bool:
        """Does this model have a profile of the customer?"""
        if self._known is None:
            self._known = set(self.user_items["user_key"])
        return user_key in self._known

    def profiles(
        self, users: Sequence[str], recents: Sequence[Sequence[str]] | None = None
    ) -> UserProfiles:
        """Profiles of `users` (unknown ones empty), plus products sent with the request
        (`recents`: counted as one click each, now)."""
        table = self.user_items[self.user_items["user_key"].isin(set(users))]
        if recents is not None and any(len(r) for r in recents):
            now = self.as_of
            extra = pd.DataFrame(
                [(u, p) for u, r in zip(users, recents, strict=True) for p in r],
                columns=["user_key", "product_id"],
            ).assign(purchases=0, weight=1.0, first_ts=now, last_ts=now)
            table = (
                pd.concat([table, extra], ignore_index=True)
                .groupby(["user_key", "product_id"], sort=False)
                .agg(
                    purchases=("purchases", "sum"),
                    weight=("weight", "sum"),
                    first_ts=("first_ts", "min"),
                    last_ts=("last_ts", "max"),
                )
                .reset_index()
            )
        return UserProfiles.of(table, users, self.index, self.as_of)

    def exclusion_mask(self, profiles: UserProfiles) -> np.ndarray:
        """True where a product may not be recommended to a customer (`data.profiles.excluded`)."""
        mask = np.zeros((len(profiles), len(self.index)), bool)
        bought, seen = profiles.purchases.tolil().rows, profiles.seen.tolil().rows
        for row in range(len(profiles)):
            ids = self.index.ids
            out = excluded(ids[bought[row]], ids[seen[row]], self.settings.exclude)
            if out:
                mask[row, [self.index.position[p] for p in out]] = True
        return mask

    # -- scores -------------------------------------------------------------------------

    def source_scores(self, name: str, profiles: UserProfiles) -> np.ndarray:
        """A source's customers × products scores."""
        if name == "popularity":
            return self.popularity.score(profiles)
        if name == "buy_again":
            return BuyAgain(self.settings.buy_again_half_life_days).score(profiles)
        if name in self.item_to_item:
            return self.item_to_item[name].score(profiles)
        if name == "user_tower":
            if self.tower is None:
                raise StageInputError("the user tower is a source but no retriever was given")
            return self.tower(self.recent_items(profiles))
        raise StageInputError(f"recommender: source {name!r} was not fitted")

    def recent_items(self, profiles: UserProfiles) -> list[list[str]]:
        """Each customer's latest `history_items` products, oldest first (the tower's input)."""
        since = profiles.days_since.tolil()
        out = []
        for cols, days in zip(since.rows, since.data, strict=True):
            order = np.argsort(-np.asarray(days), kind="stable")  # oldest first, latest last
            out.append(
                [str(self.index.ids[cols[i]]) for i in order][-self.settings.history_items :]
            )
        return out

    def tie_break(self) -> np.ndarray:
        """A tiny popularity term: products a source scores alike go best-seller first."""
        top = float(self.popularity.scores.max()) or 1.0
        return (1e-6 * self.popularity.scores / top).astype(np.float32)

    def ranked(
        self, name: str, profiles: UserProfiles, mask: np.ndarray, depth: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """A source's top `depth` allowed products per customer and all its scores."""
        scores = self.source_scores(name, profiles)
        ordered = np.where(mask, -np.inf, scores + self.tie_break())
        depth = min(depth, ordered.shape[1])
        top = np.argpartition(-ordered, depth - 1, axis=1)[:, :depth]
        values = np.take_along_axis(ordered, top, axis=1)
        order = np.lexsort((top, -values), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        allowed = np.take_along_axis(~mask, top, axis=1)
        return np.where(allowed, top, -1), scores

    # -- the mix --------------------------------------------------------------------------

    def candidates(self, profiles: UserProfiles, mask: np.ndarray) -> Candidates:
        """The union of each mix source's top `candidates`, with their features."""
        sources = self.settings.mix_sources
        depth = self.settings.candidates
        tops, scores = {}, {}
        for name in sources:
            tops[name], scores[name] = self.ranked(name, profiles, mask, depth)
        return features_of(profiles, sources, tops, scores)

    # -- what callers ask ---------------------------------------------------------------

    def recommend(
        self,
        users: Sequence[str],
        k: int = 10,
        recents: Sequence[Sequence[str]] | None = None,
        batch: int = 500,
    ) -> list[list[tuple[str, float]]]:
        """The top k (product, score) per customer, never an excluded product; popular
        products fill a list that the served source leaves short."""
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(users), batch):
            part = list(users[start : start + batch])
            rec = None if recents is None else recents[start : start + batch]
            out += self._recommend(part, k, rec)
        return out

    def _recommend(
        self, users: list[str], k: int, recents: Sequence[Sequence[str]] | None
    ) -> list[list[tuple[str, float]]]:
        profiles = self.profiles(users, recents)
        mask = self.exclusion_mask(profiles)
        fallback, _ = self.ranked("popularity", profiles, mask, k)
        lists: list[list[tuple[str, float]]] = []
        if self.settings.serve == MIX and self.ranker is not None:
            found = self.candidates(profiles, mask)
            for row, (cands, feats) in enumerate(zip(found.products, found.features, strict=True)):
                scores = self.ranker.score(feats) if len(cands) else np.empty(0)
                order = np.lexsort((cands, -scores))[:k]
                lists.append(
                    self._fill([(cands[i], float(scores[i])) for i in order], fallback[row], k)
                )
            return lists
        top, scores = self.ranked(self.settings.serve, profiles, mask, k)
        for row in range(len(users)):
            picked = [(p, float(scores[row, p])) for p in top[row] if p >= 0]
            lists.append(self._fill(picked, fallback[row], k))
        return lists

    def _fill(
        self, picked: list[tuple[int, float]], fallback: np.ndarray, k: int
    ) -> list[tuple[str, float]]:
        have = {p for p, _ in picked}
        for p in fallback:
            if len(picked) >= k:
                break
            if p >= 0 and p not in have:
                picked.append((int(p), 0.0))
                have.add(int(p))
        return [(str(self.index.ids[p]), s) for p, s in picked[:k]]

    # -- saving -------------------------------------------------------------------------

    def save(self, folder: Path, info: dict | None = None) -> None:
        """Everything needed to serve at the snapshot time (not the user tower: the
        retriever is the engine's)."""
        folder.mkdir(parents=True, exist_ok=True)
        write_json(
            folder / SETTINGS,
            {**self.settings.as_dict(), "as_of": self.as_of.isoformat(), **(info or {})},
        )
        write_parquet(self.user_items, folder / USER_ITEMS)
        np.save(folder / POPULARITY, self.popularity.scores)
        write_parquet(pd.DataFrame({"product_id": self.index.ids}), folder / "products.parquet")
        for model in self.item_to_item.values():
            model.save(folder)
        if self.ranker is not None:
            self.ranker.save(folder / RANKER, {"sources": list(self.settings.mix_sources)})

    @classmethod
    def load(cls, folder: Path, tower: Tower | None = None) -> Recommender | None:
        """The recommender saved in `folder`; None where the stage had nothing to recommend
        from (a shop without purchases: its marker says why)."""
        path = folder / SETTINGS
        if not path.exists():
            raise StageInputError(f"{path}: no recommender; run the recommender stage")
        raw = read_json(path)
        if raw.get("serve") is None:
            return None
        settings = RecommendSettings.from_dict(raw)
        index = ItemIndex(pd.read_parquet(folder / "products.parquet")["product_id"])
        as_of = pd.Timestamp(raw["as_of"])
        pairs: dict[str, ItemToItem] = {}
        knobs = {"ease": settings.ease_l2, "item_knn": float(settings.knn_neighbours)}
        for name in ("ease", "item_knn"):
            if name in settings.needs():
                pairs[name] = ItemToItem.load(folder, name, knobs[name])
        ranker = None
        if settings.serve == MIX:
            ranker = FeatureRanker.load(
                folder / RANKER, feature_names(settings.mix_sources), "recommender"
            )
        return cls(
            index,
            settings,
            as_of,
            pd.read_parquet(folder / USER_ITEMS),
            Popularity(settings.popularity_half_life_days, np.load(folder / POPULARITY)),
            pairs,
            ranker,
            tower,
        )
