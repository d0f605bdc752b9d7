"""User-level differential privacy for fine-tuning: DP-SGD with the customer as the unit.

One customer contributes many events (searches, clicks, purchases), so a guarantee about one
event says little about a customer. Here the unit is the customer (McMahan et al., ICLR 2018,
"Learning differentially private recurrent language models"). Every step

1. samples customers by Poisson sampling: each one independently with rate
   q = users_per_step / customers, the sampling the accountant assumes;
2. computes each sampled customer's loss on (at most `max_examples_per_user` of) their own
   examples only, and its gradient, clipped to `max_grad_norm` (C): whatever one customer
   did, their share of the step's gradient is at most C;
3. sums the clipped gradients, adds Gaussian noise of standard deviation σ·C and divides by
   the expected number of customers per step.

The customers' gradients come from one batched forward and backward: Opacus's hooks give each
example's gradient (`GradSampleModule`), and `private_gradients` sums them per customer
before clipping.

σ (the noise multiplier) is the smallest that keeps the run within (ε, δ) after all its
steps, found with Opacus's accountant (PRV by default; `opacus.accountants`); the ε actually
spent is computed by the same accountant from the steps run and recorded with the model.

The sampling and the noise draw from the operating system's random source, not from the
project's seed: an adversary who knows the seed (it is in params.yaml) would know who was
sampled and could subtract the noise. A private run is therefore not reproducible, by design.
This is not Opacus's `secure_mode` (no defence against floating-point attacks on the noise).
"""

from __future__ import annotations

import logging
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from shopflow.core.config import DpConfig
from shopflow.core.errors import ConfigError

log = logging.getLogger(__name__)

# Beyond this much noise a step's gradient is mostly noise (a customer's share is at most
# 1/users_per_step of σ·C): a budget that needs more is refused, not searched for at length.
MAX_NOISE_MULTIPLIER = 50.0
PLURAL = {  # a unit's name (`Units.kind`) in the plural, for the messages
    "judged query": "judged queries",
    "customer or judged query": "customers or judged queries",
}


@dataclass(frozen=True)
class PrivacyPlan:
    """The noise a private run adds and what it spends, fixed before training starts."""

    epsilon: float  # the budget
    delta: float
    noise_multiplier: float  # σ
    sample_rate: float  # q
    steps: int
    units: int  # customers (or judged queries) in the training data
    max_grad_norm: float  # C
    users_per_step: int
    accountant: str
    unit: str = "customer"  # what one unit is (`Units.kind`)

    def spent(self, steps: int | None = None) -> float:
        """ε spent after `steps` steps (default: all), by the plan's accountant."""
        return spent_epsilon(
            self.noise_multiplier,
            self.sample_rate,
            self.steps if steps is None else steps,
            self.delta,
            self.accountant,
        )

    def record(self, steps: int | None = None) -> dict:
        """What the model's metadata, the metrics and the registry keep."""
        return {**asdict(self), "epsilon_spent": self.spent(steps)}


def spent_epsilon(sigma: float, rate: float, steps: int, delta: float, accountant: str) -> float:
    """ε of `steps` Poisson-sampled Gaussian steps (σ, q) at δ, by Opacus's accountant."""
    from opacus.accountants import create_accountant

    if steps == 0:
        return 0.0
    counter = create_accountant(accountant)
    counter.history = [(sigma, rate, steps)]
    with warnings.catch_warnings():  # at large σ the bound's best order is the range's end
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(counter.get_epsilon(delta))


def plan(cfg: DpConfig, units: int, steps: int, unit: str = "customer") -> PrivacyPlan:
    """The noise multiplier for `steps` steps over `units` privacy units (each a `unit`)
    within the budget; a clear error naming the key when the budget cannot be met."""
    from opacus.accountants.utils import get_noise_multiplier

    many = PLURAL.get(unit, f"{unit}s")
    if units < 2:
        raise ConfigError(f"privacy.dp: {units} {unit}(s) in the training data: nothing to hide in")
    delta = cfg.delta if cfg.delta is not None else 1 / (10 * units)
    if delta >= 1 / units:
        raise ConfigError(
            f"privacy.dp.delta {delta:g} is not below 1 / {many} (1/{units} = {1 / units:.3g}): "
            f"a mechanism that reveals one whole {unit}'s data with probability δ would meet it"
        )
    if cfg.users_per_step >= units:
        raise ConfigError(
            f"privacy.dp.users_per_step {cfg.users_per_step} is not below the {units} {many} "
            "in the training data: sampling would not hide who took part"
        )
    rate = cfg.users_per_step / units
    floor = spent_epsilon(MAX_NOISE_MULTIPLIER, rate, steps, delta, cfg.accountant)
    if floor > cfg.epsilon:
        raise ConfigError(
            f"privacy.dp.epsilon {cfg.epsilon:g} cannot be met for {steps} steps sampling "
            f"{cfg.users_per_step} of {units} {many} at δ={delta:.3g}: even a noise "
            f"multiplier of {MAX_NOISE_MULTIPLIER:g} spends ε={floor:.3g}; raise "
            "privacy.dp.epsilon, or lower retriever.steps or privacy.dp.users_per_step"
        )
    try:
        with warnings.catch_warnings():  # as in spent_epsilon
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            sigma = get_noise_multiplier(
                target_epsilon=cfg.epsilon,
                target_delta=delta,
                sample_rate=rate,
                steps=steps,
                accountant=cfg.accountant,
                epsilon_tolerance=0.01,
            )
    except ValueError as exc:
        raise ConfigError(
            f"privacy.dp.epsilon {cfg.epsilon:g} cannot be met for {steps} steps sampling "
            f"{cfg.users_per_step} of {units} {many} at δ={delta:.3g} ({exc}): raise "
            "privacy.dp.epsilon, or lower retriever.steps or privacy.dp.users_per_step"
        ) from None
    found = PrivacyPlan(
        cfg.epsilon,
        delta,
        float(sigma),
        rate,
        steps,
        units,
        cfg.max_grad_norm,
        cfg.users_per_step,
        cfg.accountant,
        unit,
    )
    log.info(
        "privacy: ε=%g δ=%.3g over %d steps, %d of %d %s per step (q=%.4f): noise "
        "multiplier σ=%.3f, clip C=%g",
        cfg.epsilon,
        delta,
        steps,
        cfg.users_per_step,
        units,
        many,
        rate,
        sigma,
        cfg.max_grad_norm,
    )
    return found


class SecretDraws:
    """Who is sampled and the noise, from the OS's random source (see the module docstring)."""

    def __init__(self) -> None:
        self.numbers = np.random.default_rng(secrets.randbits(128))
        self.noise = torch.Generator().manual_seed(secrets.randbits(63))

    def sample(self, units: int, rate: float) -> np.ndarray:
        """Poisson sampling: each unit independently with probability `rate` (may be empty)."""
        return np.flatnonzero(self.numbers.random(units) < rate)

    def subset(self, rows: np.ndarray, most: int) -> np.ndarray:
        """At most `most` of a customer's example rows, drawn without replacement."""
        return rows if len(rows) <= most else self.numbers.choice(rows, most, replace=False)

    def gaussian(self, like: torch.Tensor, std: float) -> torch.Tensor:
        return torch.normal(0.0, std, like.shape, generator=self.noise).to(like.device, like.dtype)


def private_gradients(
    parameters: Sequence[torch.nn.Parameter],
    per_example: Sequence[torch.Tensor],
    owners: torch.Tensor,
    plan: PrivacyPlan,
    draws: SecretDraws,
) -> list[torch.Tensor]:
    """The step's private gradient of each parameter, from the per-example gradients
    (`per_example[i]`: parameter i's, one row per example; `owners[e]`: the index of example
    e's customer among this step's, 0..n-1): each customer's examples summed, each customer's
    gradient clipped to C over all parameters together, the sum plus Gaussian noise (σ·C),
    over the expected customers per step."""
    customers = int(owners.max()) + 1 if len(owners) else 0
    per_user = [
        torch.zeros((customers, *p.shape), dtype=g.dtype, device=g.device).index_add_(0, owners, g)
        for p, g in zip(parameters, per_example, strict=True)
    ]
    squares = [u.flatten(1).pow(2).sum(1) for u in per_user]
    norms = torch.stack(squares).sum(0).sqrt() if squares else torch.zeros(0)
    scale = (plan.max_grad_norm / (norms + 1e-12)).clamp(max=1.0)
    std = plan.noise_multiplier * plan.max_grad_norm
    return [
        (torch.einsum("u,u...->...", scale.to(u.dtype), u) + draws.gaussian(p, std))
        / plan.users_per_step
        for p, u in zip(parameters, per_user, strict=True)
    ]
