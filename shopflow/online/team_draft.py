"""Team-draft interleaving (Radlinski, Kurup & Joachims, CIKM 2008): one list from two
rankings, each shown product credited to the ranking (team) that placed it. Shared by the
service (live interleaving) and the offline A/B evaluation (simulated interleaving)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

import numpy as np

DEPTH = 10
Item = TypeVar("Item", bound=Hashable)  # a product id (or index)


def team_draft(
    a: Sequence[Item], b: Sequence[Item], rng: np.random.Generator, depth: int = DEPTH
) -> tuple[list[Item], list[int]]:
    """Team-draft interleaving of rankings a and b: (shown list, team per slot: 0 = a, 1 = b).

    The team with fewer picks picks next; equal counts toss a coin. A team out of products
    passes its turn to the other.
    """
    rankings = (list(a), list(b))
    pointers, picks = [0, 0], [0, 0]
    shown: list[Item] = []
    teams: list[int] = []
    seen: set[Item] = set()

    def next_unseen(team: int) -> Item | None:
        ranking = rankings[team]
        while pointers[team] < len(ranking) and ranking[pointers[team]] in seen:
            pointers[team] += 1
        return ranking[pointers[team]] if pointers[team] < len(ranking) else None

    while len(shown) < depth:
        if picks[0] != picks[1]:
            team = 0 if picks[0] < picks[1] else 1
        else:
            team = int(rng.random() >= 0.5)
        pid = next_unseen(team)
        if pid is None:
            team = 1 - team
            pid = next_unseen(team)
            if pid is None:
                break
        shown.append(pid)
        teams.append(team)
        seen.add(pid)
        picks[team] += 1
    return shown, teams


def common_prefix(a: Sequence[Item], b: Sequence[Item]) -> int:
    """How many leading positions the two rankings share. Team draft shows that prefix as
    it is whoever picks, so a click there says nothing about which ranking is better: its credit
    is only a coin toss. Leaving those clicks out removes noise, not signal."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
