"""The retriever's examples grouped by whose data they are: the units user-level DP-SGD
samples and clips (`training.privacy`), and the customers the membership audit holds out.

A unit is a customer (their pseudonymous key: every search, click and purchase of theirs), or
`judged:<query>` for an annotator's judgments of one query, which hold no customer's data but
are sampled and clipped the same way, so nothing in a step escapes the accounting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shopflow.training.retrieval_examples import Examples

JUDGED = "judged:"


@dataclass(frozen=True)
class Units:
    """Each unit's name and the rows of its examples."""

    names: np.ndarray
    rows: list[np.ndarray]

    @classmethod
    def of(cls, examples: Examples) -> Units:
        names, inverse = np.unique(examples.units, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(names)))[:-1]
        return cls(names, np.split(order, bounds))

    def __len__(self) -> int:
        return len(self.names)

    def customers(self) -> np.ndarray:
        """The indices of the units that are customers (not judged queries)."""
        return np.flatnonzero(~np.char.startswith(self.names.astype(str), JUDGED))

    def kind(self) -> str:
        """What a unit is here, as the privacy record and messages name it: a shop with
        customer ids has customers (and maybe judged queries); a judgments-only source such
        as Home Depot only judged queries."""
        customers = len(self.customers())
        if customers == len(self):
            return "customer"
        return "judged query" if customers == 0 else "customer or judged query"


def hold_out_customers(
    examples: Examples, share: float, seed: int
) -> tuple[Examples, Examples | None]:
    """Split off `share` of the customers with all their examples (the membership audit's
    outsiders: never trained on); judged queries stay. `share` 0: nothing held out."""
    if share <= 0:
        return examples, None
    units = Units.of(examples)
    customers = units.customers()
    count = round(share * len(customers))
    if count == 0:
        return examples, None
    chosen = np.random.default_rng(seed).choice(customers, count, replace=False)
    held = np.zeros(len(examples), dtype=bool)
    for unit in chosen:
        held[units.rows[unit]] = True
    return examples.subset(np.flatnonzero(~held)), examples.subset(np.flatnonzero(held))
