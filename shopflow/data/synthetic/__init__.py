"""The embedded default data: a seeded, deterministic simulator of an online shop.

`ShopWorld` is the fixed world (catalogue, users, ground truth); `simulate_day` produces a
day of traffic; `UserModel` lets later stages replay the shop's users on any ranking (the
A/B stage interleaves champion and challenger through it); `generate` assembles the contract
tables for a date window.
"""

from shopflow.data.synthetic.generate import generate
from shopflow.data.synthetic.sessions import simulate_day
from shopflow.data.synthetic.user_model import UserModel
from shopflow.data.synthetic.world import ShopWorld

__all__ = ["ShopWorld", "UserModel", "generate", "simulate_day"]
