"""The synthetic shop's users, callable on any ranking.

Offline metrics say how a ranking scores against judgments; the A/B stage also needs to know
how users would *behave* on it. `UserModel` draws search requests with hidden intents and
returns the clicks those users would make on any list of product ids, under the same
position-based click model that generated the logs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np

from shopflow.data.synthetic.sessions import Requests, sample_requests, simulate_clicks
from shopflow.data.synthetic.world import ShopWorld, _stream


class UserModel:
    def __init__(self, world: ShopWorld) -> None:
        self.world = world

    def sample_requests(self, day: dt.date, n: int, seed: int = 0) -> Requests:
        rng = _stream(self.world.seed, 30, day.toordinal(), seed)
        users = rng.choice(self.world.cfg.n_users, n, p=self.world.u_activity)
        return sample_requests(self.world, rng, users, day)

    def _indices(self, rankings: Sequence[Sequence[str]]) -> np.ndarray:
        depth = max((len(r) for r in rankings), default=0)
        out = np.full((len(rankings), depth), -1, dtype=np.int64)
        for i, ranking in enumerate(rankings):
            for j, pid in enumerate(ranking):
                out[i, j] = self.world.id_index.get(pid, -1)
        return out

    def grades(self, requests: Requests, rankings: Sequence[Sequence[str]]) -> np.ndarray:
        """True grade (0..3) of every ranked product; unknown ids and padding grade 0."""
        idx = self._indices(rankings)
        grades = self.world.relevance(
            requests.leaf,
            requests.colour,
            requests.material,
            requests.brand,
            np.maximum(idx, 0),
        )
        return np.where(idx >= 0, grades, 0).astype(np.int8)

    def clicks(
        self,
        requests: Requests,
        rankings: Sequence[Sequence[str]],
        day: dt.date,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Simulated clicks (requests × depth) of the requests' users on `rankings`."""
        idx = self._indices(rankings)
        grades = self.grades(requests, rankings)
        return simulate_clicks(self.world, requests.user, idx, grades, day, rng)
