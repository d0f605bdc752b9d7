"""The embedded default data: a seeded, deterministic simulator of an online shop.

`ShopWorld` is the fixed world (catalogue, users, ground truth); `simulate_day` produces a
day of traffic; `UserModel` lets later stages replay the shop's users on any ranking (the
A/B stage interleaves champion and challenger through it); `generate` assembles the contract
tables for a date window.
"""

from pipelines.synthetic.generate import generate
from pipelines.synthetic.sessions import simulate_day
from pipelines.synthetic.user_model import UserModel
from pipelines.synthetic.world import ShopWorld

__all__ = ["ShopWorld", "UserModel", "generate", "simulate_day"]
