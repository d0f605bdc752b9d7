"""User-level differential privacy (`training.privacy`): the accounting against Opacus's own
accountant, the per-customer clipping and noise, the sampling, the units, the membership
audit's AUC, and each bad setting refused before training with the key named."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from shopflow.core.config import DpConfig
from shopflow.core.errors import ConfigError
from shopflow.evaluation.guardrails import privacy_guardrail
from shopflow.evaluation.membership import loss_threshold_auc
from shopflow.training.privacy import SecretDraws, plan, private_gradients
from shopflow.training.retrieval_examples import Examples
from shopflow.training.user_level import Units, hold_out_customers
from tests.conftest import tiny_params

pytestmark = pytest.mark.unit


def dp(**given) -> DpConfig:
    settings = tiny_params().privacy.dp.model_dump() | {
        "enabled": True,
        "epsilon": 3.0,
        "delta": None,
        "users_per_step": 100,
        "public_negatives": 16,
        "accountant": "prv",
    }
    return DpConfig(**(settings | given))


@pytest.mark.parametrize("name, counter", [("prv", PRVAccountant), ("rdp", RDPAccountant)])
def test_the_planned_noise_spends_the_budget_by_the_librarys_own_accountant(name, counter):
    """A planted schedule: 1,000 steps sampling 100 of 10,000 customers, ε=3, δ=1e-5. The
    library's accountant, stepped once per training step, agrees with the plan's figure."""
    found = plan(dp(accountant=name, delta=1e-5), units=10_000, steps=1_000)
    assert found.sample_rate == pytest.approx(0.01)
    accountant = counter()
    for _ in range(1_000):  # the schedule as Opacus's optimizer records it, step by step
        accountant.step(noise_multiplier=found.noise_multiplier, sample_rate=0.01)
    stepped = accountant.get_epsilon(delta=1e-5)
    assert stepped == pytest.approx(found.spent(), rel=1e-3)
    assert 3.0 * 0.97 < found.spent() <= 3.0 + 0.01  # the smallest noise within the budget
    assert found.spent(500) < found.spent()  # half the steps spend less
    assert plan(dp(epsilon=1.0), 10_000, 1_000).noise_multiplier > found.noise_multiplier


def test_delta_defaults_below_one_over_the_customers():
    assert plan(dp(), units=5_000, steps=100).delta == pytest.approx(1 / 50_000)


@pytest.mark.parametrize(
    "given, units, steps, key",
    [
        ({"delta": 1e-3}, 1_000, 100, "privacy.dp.delta"),  # δ = 1/n: a whole customer leaks
        ({"epsilon": 1e-3, "users_per_step": 500}, 1_000, 1_000, "privacy.dp.epsilon"),
        ({"users_per_step": 1_000}, 1_000, 100, "privacy.dp.users_per_step"),
    ],
)
def test_a_budget_that_cannot_be_met_is_refused_naming_the_key(given, units, steps, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        plan(dp(**given), units=units, steps=steps)


def test_dp_on_a_model_without_dp_training_is_refused_before_any_stage_runs():
    with pytest.raises(ConfigError, match=r"reranker\.click_share"):
        tiny_params("privacy.dp.enabled=true", "reranker.click_share=0.5")
    tiny_params("privacy.dp.enabled=true", "reranker.click_share=0")  # judgments only: fine


def test_each_customer_moves_the_gradient_by_at_most_the_clip():
    """Without noise, a step's gradient is the sum of the customers' clipped gradients over
    the expected customers per step: huge gradients cannot push it past n·C / users_per_step,
    and a customer's examples are summed before the clip (not clipped one by one)."""
    weight = torch.nn.Parameter(torch.zeros(5))
    found = plan(dp(epsilon=50.0, users_per_step=4, max_grad_norm=0.5), units=100, steps=10)
    quiet = type(found)(**{**found.__dict__, "noise_multiplier": 0.0})
    direction = torch.arange(5.0) / torch.arange(5.0).norm()
    examples = torch.stack([1e6 * direction, 2e6 * direction, -3e6 * direction])
    (grad,) = private_gradients([weight], [examples], torch.tensor([0, 1, 2]), quiet, SecretDraws())
    assert float(grad.norm()) == pytest.approx(0.5 / 4, rel=1e-5)  # +C +C -C
    small = 0.3 * direction.expand(2, 5)  # one customer, two examples: 0.6 clipped to 0.5
    (grad,) = private_gradients([weight], [small], torch.tensor([0, 0]), quiet, SecretDraws())
    assert float(grad.norm()) == pytest.approx(0.5 / 4, rel=1e-5)
    # and the noise has the planned scale: σ·C over the users per step, also with nobody sampled
    big = torch.nn.Parameter(torch.zeros(200_000))
    nobody = (big.new_zeros((0, 200_000)),)
    (grad,) = private_gradients(
        [big], nobody, torch.zeros(0, dtype=torch.long), found, SecretDraws()
    )
    expected = found.noise_multiplier * 0.5 / 4
    assert float(grad.std()) == pytest.approx(expected, rel=0.02)


def test_opacus_per_example_gradients_of_both_towers_are_each_examples_own():
    """Private training reads each example's gradient from Opacus's hooks on the trained
    layers, with the query and product towers run in one call (three batches): each must
    equal that example's gradient computed alone."""
    from opacus import GradSampleModule

    from shopflow.models.bi_encoder import base_bi_encoder

    encoder = base_bi_encoder(tiny_params().models).model.train()
    torch.manual_seed(0)
    encoder.transformer.config.hidden_dropout_prob = 0.0
    for module in encoder.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    encoder.train_top_layers(1)
    trained = [p for p in encoder.parameters() if p.requires_grad]
    ids = torch.randint(5, 100, (3, 3, 7))  # queries, positives, negatives of 3 examples
    mask = torch.ones_like(ids)
    mask[:, 1, 5:] = 0  # padding

    def losses(model, rows):
        query, positive, negative = model(*[(ids[k][rows], mask[k][rows]) for k in range(3)])
        logits = torch.stack([(query * positive).sum(-1), (query * negative).sum(-1)], 1)
        return -torch.log_softmax(logits / 0.05, 1)[:, 0]

    sampler = GradSampleModule(encoder, batch_first=True, loss_reduction="sum")
    losses(encoder, [0, 1, 2]).sum().backward()
    per_example = [p.grad_sample.clone() for p in trained]
    sampler.remove_hooks()
    for e in range(3):
        alone = torch.autograd.grad(losses(encoder, [e]).sum(), trained)
        for together, own in zip(per_example, alone, strict=True):
            torch.testing.assert_close(together[e], own, rtol=1e-4, atol=1e-6)


def test_sampling_is_poisson_at_the_rate_and_not_seeded():
    one, two = SecretDraws(), SecretDraws()
    counts = [len(one.sample(10_000, 0.01)) for _ in range(50)]
    assert np.mean(counts) == pytest.approx(100, rel=0.05) and len(set(counts)) > 1
    assert not np.array_equal(one.sample(10_000, 0.5), two.sample(10_000, 0.5))


def examples(units: list[str]) -> Examples:
    n = len(units)
    return Examples(
        [f"q{i}" for i in range(n)],
        np.arange(n),
        np.full(n, -1),
        np.array(["clicks"] * n),
        np.array(units),
    )


def test_units_group_a_customers_examples_and_the_hold_out_takes_all_of_them():
    given = examples(["a", "b", "a", "judged:x", "c", "a", "b", "judged:x"])
    units = Units.of(given)
    assert dict(zip(units.names, map(list, units.rows), strict=True)) == {
        "a": [0, 2, 5],
        "b": [1, 6],
        "c": [4],
        "judged:x": [3, 7],
    }
    assert sorted(units.names[units.customers()]) == ["a", "b", "c"]
    kept, held = hold_out_customers(given, 0.34, seed=1)
    assert held is not None and len(set(held.units)) == 1  # one of three customers
    assert not set(held.units) & set(kept.units) and "judged:x" in set(kept.units)
    assert len(kept) + len(held) == len(given)
    assert hold_out_customers(given, 0.0, seed=1) == (given, None)


def test_the_privacy_unit_is_named_for_what_the_shop_has():
    """A judgments-only shop (Home Depot) has judged queries, not customers, as units: the
    record and the messages say so."""
    assert Units.of(examples(["a", "b", "a"])).kind() == "customer"
    assert Units.of(examples(["judged:x", "judged:y"])).kind() == "judged query"
    assert Units.of(examples(["a", "judged:x"])).kind() == "customer or judged query"
    found = plan(dp(users_per_step=10), units=1_000, steps=10, unit="judged query")
    assert found.record()["unit"] == "judged query"
    with pytest.raises(ConfigError, match="not below the 1000 judged queries"):
        plan(dp(users_per_step=2_000), units=1_000, steps=10, unit="judged query")


def test_the_membership_audit_auc():
    assert loss_threshold_auc(np.array([0.1, 0.2]), np.array([0.5, 0.9])) == 1.0
    assert loss_threshold_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 0.0
    same = np.random.default_rng(0).normal(size=(2, 4_000))
    assert loss_threshold_auc(same[0], same[1]) == pytest.approx(0.5, abs=0.03)


def test_the_gate_refuses_a_challenger_over_budget_or_trained_without_dp():
    params = tiny_params("privacy.dp.enabled=true", "reranker.click_share=0")
    within = {"epsilon_spent": 2.9}
    assert privacy_guardrail(tiny_params(), None, None) == []  # DP off: not gated
    assert privacy_guardrail(params, within, None)[0].passed(0.05)
    assert not privacy_guardrail(params, {"epsilon_spent": 9.0}, within)[0].passed(0.05)
    assert not privacy_guardrail(params, None, within)[0].passed(0.05)


def test_private_training_trains_only_the_top_layers():
    from shopflow.models.bi_encoder import base_bi_encoder

    encoder = base_bi_encoder(tiny_params().models).model
    layers = encoder.transformer.encoder.layer
    top = encoder.train_top_layers(1)
    assert top == sum(p.numel() for p in layers[-1].parameters())
    assert not encoder.transformer.get_input_embeddings().weight.requires_grad
    assert not any(p.requires_grad for layer in layers[:-1] for p in layer.parameters())
    every = encoder.train_top_layers(None)
    assert every == sum(p.numel() for p in layers.parameters())
    with pytest.raises(ConfigError, match=r"privacy\.dp\.trained_layers 99"):
        encoder.train_top_layers(99)


def test_the_privacy_bench_compares_settings_the_stages_accept():
    """`make bench-privacy`'s settings: each private one trains the reranker on judgments only
    (the stages refuse DP with click groups); the judgments-only non-private row only where
    the shop has a click log (without one it would repeat the first row)."""
    from shopflow.core import paths
    from shopflow.core.config import load_params
    from tools.bench.privacy import JUDGMENTS_ONLY, settings

    with_clicks, without = settings((8.0, 1.0)), settings((8.0, 1.0), clicks=False)
    assert list(with_clicks) == ["no DP", "DP ε=8", "DP ε=1", "no DP, judgments-only reranker"]
    assert list(without) == ["no DP", "DP ε=8", "DP ε=1"]
    for label, overrides in with_clicks.items():
        params = load_params(paths.PARAMS, overrides)
        assert params.privacy.dp.enabled == label.startswith("DP")
        assert (JUDGMENTS_ONLY in overrides) == (label != "no DP")
