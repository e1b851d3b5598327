"""Online preference policy gradients (Nash-MD, P3O, CoPG, f-DPG), SPO's win-rate reward and SALSA's soup.

Unit tests check each loss against hand-computed values and its gradient against the formula; fast runs go
through workbench.train.run; the slow ones train each method briefly on the synthetic preference task and check
that the oracle win rate (or accuracy) rises over the SFT start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pytest
import torch

from conftest import FAST, FAST_BASE, compose_cfg
from workbench.config import validate
from workbench.errors import ConfigError
from workbench.methods.preference.losses import fdpg_loss
from workbench.methods.preference.pairwise_pg import WindowedBaseline, sample_geometric_mixture
from workbench.methods.preference.pg_losses import copg_loss, nash_md_loss, p3o_loss
from workbench.rewards import REWARDS, RewardSet
from workbench.rewards.judges import Judge
from workbench.rewards.preference import group_win_rates
from workbench.tasks.preference_synthetic import SyntheticPreferenceTask
from workbench.train import run

D = torch.float64


# ---- Nash-MD --------------------------------------------------------------------------------------------------------
def _trl_nash_md(model_logprobs, ref_logprobs, probability, beta):
    """TRL NashMDTrainer._compute_losses, transcribed (padding already zeroed in both log-prob tensors)."""
    score = (probability - 0.5) * model_logprobs.sum(1)
    with torch.no_grad():
        log_ratio = model_logprobs - ref_logprobs
    kl_div_loss = (log_ratio * model_logprobs).sum(1)
    return (beta * kl_div_loss - score).mean()


def test_nash_md_loss_hand_values_and_trl():
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -7.0]], dtype=D, requires_grad=True)  # -7: padding
    ref = torch.tensor([[-1.5, -1.0], [-1.0, -3.0]], dtype=D)
    mask = torch.tensor([[1, 1], [1, 0]])
    p = torch.tensor([1.0, 0.0], dtype=D)
    losses, stats = nash_md_loss(lp, ref, mask, p, beta=0.1)
    # row 0: beta * (0.5 * -1 + -1 * -2) - 0.5 * -3 = 0.15 + 1.5; row 1: beta * (0.5 * -0.5) - (-0.5 * -0.5)
    assert losses.tolist() == pytest.approx([1.65, -0.275])
    assert stats["kl"].item() == pytest.approx((-0.5 + 0.5) / 2)
    assert stats["probability"].item() == pytest.approx(0.5)
    (grad,) = torch.autograd.grad(losses.mean(), lp)
    # d/dl_t = [beta * sg(l_t - r_t) - (P - 1/2)] / B on real tokens, 0 on padding
    expected = torch.tensor([[0.1 * 0.5 - 0.5, 0.1 * -1.0 - 0.5], [0.1 * 0.5 + 0.5, 0.0]], dtype=D) / 2
    assert torch.allclose(grad, expected)
    # same value and gradient as TRL's code on the masked tensors
    lp2 = (lp.detach() * mask).requires_grad_(True)
    trl = _trl_nash_md(lp2, ref * mask, p, 0.1)
    assert trl.item() == pytest.approx(losses.mean().item())
    (trl_grad,) = torch.autograd.grad(trl, lp2)
    assert torch.allclose(trl_grad * mask, grad)


# ---- P3O ------------------------------------------------------------------------------------------------------------
def _p3o_inputs():
    logp1 = torch.tensor([-1.0], dtype=D, requires_grad=True)
    logp2 = torch.tensor([-2.0], dtype=D, requires_grad=True)
    old1, old2 = torch.tensor([-1.2], dtype=D), torch.tensor([-2.0], dtype=D)  # rho_1 = e^0.2 > 1.2, rho_2 = 1
    return logp1, logp2, old1, old2, torch.tensor([1.0], dtype=D), torch.tensor([0.0], dtype=D)


def test_p3o_separate_clipping_hand_values():
    logp1, logp2, old1, old2, r1, r2 = _p3o_inputs()
    loss, stats = p3o_loss(logp1, logp2, old1, old2, r1, r2, eps=0.2, clip="separate")
    # A = (1 - 0) / 2: -min(e^0.2 A, 1.2 A) - min(1 * -A, 1 * -A) = -0.6 + 0.5
    assert loss.item() == pytest.approx(-0.1)
    g1, g2 = torch.autograd.grad(loss.sum(), [logp1, logp2])
    assert g1.item() == 0.0  # y1's clipped branch is active: no gradient pushes its ratio further
    assert g2.item() == pytest.approx(0.5)  # d/dlogp2 of -rho_2 * (-A)
    assert stats["clip_frac"].item() == pytest.approx(0.5)


def test_p3o_joint_clipping_hand_values():
    logp1, logp2, old1, old2, r1, r2 = _p3o_inputs()
    loss, stats = p3o_loss(logp1, logp2, old1, old2, r1, r2, eps=0.2, clip="joint")
    assert loss.item() == pytest.approx(-0.6)  # rho = rho_1 / rho_2 = e^0.2, clipped to 1.2
    g1, g2 = torch.autograd.grad(loss.sum(), [logp1, logp2])
    assert g1.item() == 0.0 and g2.item() == 0.0
    assert stats["clip_frac"].item() == 1.0


def test_p3o_kl_is_folded_into_each_reward():
    logp1, logp2, _, _, r1, r2 = _p3o_inputs()
    old1, old2 = logp1.detach(), logp2.detach()  # on-policy: rho = 1
    ref1, ref2 = torch.tensor([-1.5], dtype=D), torch.tensor([-1.0], dtype=D)
    loss, stats = p3o_loss(logp1, logp2, old1, old2, r1, r2, 0.2, "separate", ref1, ref2, beta=0.5)
    # r~1 = 1 - 0.5 * (-1 + 1.5) = 0.75, r~2 = 0 - 0.5 * (-2 + 1) = 0.5: A = 0.125
    assert stats["reward_gap"].item() == pytest.approx(0.25)
    g1, g2 = torch.autograd.grad(loss.sum(), [logp1, logp2])
    assert g1.item() == pytest.approx(-0.125) and g2.item() == pytest.approx(0.125)


def test_p3o_rejects_unknown_clipping():
    with pytest.raises(ValueError, match="clipping"):
        p3o_loss(*[torch.zeros(1)] * 6, clip="both")


# ---- CoPG -----------------------------------------------------------------------------------------------------------
def test_copg_loss_hand_values_and_gradient():
    logp1 = torch.tensor([-1.0], dtype=D, requires_grad=True)
    logp2 = torch.tensor([-2.0], dtype=D, requires_grad=True)
    ref1, ref2 = torch.tensor([-1.5], dtype=D), torch.tensor([-1.0], dtype=D)
    loss, stats = copg_loss(logp1, logp2, ref1, ref2, torch.tensor([1.0], dtype=D), torch.tensor([0.0], dtype=D), beta=0.5)
    # R_beta(y1) = 1 - 0.5 * 0.5 = 0.75, R_beta(y2) = 0 - 0.5 * (-1) = 0.5, Delta = 0.25; loss = Delta^2 / (4 beta)
    assert loss.item() == pytest.approx(0.25 ** 2 / 2)
    assert stats["delta"].item() == pytest.approx(0.25)
    g1, g2 = torch.autograd.grad(loss.sum(), [logp1, logp2])
    assert g1.item() == pytest.approx(-0.125) and g2.item() == pytest.approx(0.125)  # -(1/2) Delta grad(l1 - l2)


def test_copg_is_stationary_at_the_kl_regularized_optimum():
    """A bandit, every ordered pair of arms: at pi* ~ pi_ref exp(R / beta) every contrast is 0 (loss and gradient)."""
    g = torch.Generator().manual_seed(0)
    k, beta = 5, 0.3
    ref = torch.log_softmax(torch.randn(k, generator=g, dtype=D), 0)
    rewards = torch.randn(k, generator=g, dtype=D)
    i, j = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    i, j = i.flatten(), j.flatten()

    def total(theta):
        lp = torch.log_softmax(theta, 0)
        return copg_loss(lp[i], lp[j], ref[i], ref[j], rewards[i], rewards[j], beta)[0].mean()

    optimum = (ref + rewards / beta).clone().requires_grad_(True)
    value = total(optimum)
    (grad,) = torch.autograd.grad(value, optimum)
    assert value.item() == pytest.approx(0.0, abs=1e-20) and grad.abs().max().item() < 1e-12
    elsewhere = ref.clone().requires_grad_(True)  # pi = pi_ref is not optimal: a descent step lowers the loss
    (grad,) = torch.autograd.grad(total(elsewhere), elsewhere)
    assert grad.abs().max().item() > 1e-3
    assert total(elsewhere.detach() - 0.1 * grad) < total(elsewhere.detach())


def test_p3o_on_policy_has_copg_gradient():
    """One update on fresh samples (pi_old = pi): P3O's clipped pairwise gradient with the KL folded into the reward
    equals CoPG's contrastive gradient (both are (1/2) Delta R_beta grad(log pi(y1) - log pi(y2)))."""
    g = torch.Generator().manual_seed(1)
    logps = torch.randn(8, generator=g, dtype=D).requires_grad_(True)
    ref, rewards = torch.randn(8, generator=g, dtype=D), torch.randn(8, generator=g, dtype=D)
    beta = 0.2
    p3o, _ = p3o_loss(logps[0::2], logps[1::2], logps.detach()[0::2], logps.detach()[1::2], rewards[0::2], rewards[1::2],
                      0.2, "separate", ref[0::2], ref[1::2], beta)
    copg, _ = copg_loss(logps[0::2], logps[1::2], ref[0::2], ref[1::2], rewards[0::2], rewards[1::2], beta)
    (g_p3o,) = torch.autograd.grad(p3o.sum(), logps)
    (g_copg,) = torch.autograd.grad(copg.sum(), logps)
    assert torch.allclose(g_p3o, g_copg)


# ---- f-DPG: one Z per prompt -----------------------------------------------------------------------------------------
def _js(t):
    return t * torch.log(t) - (1 + t) * torch.log((1 + t) / 2)


def test_fdpg_estimates_z_per_prompt():
    """Two prompts whose targets have very different normalizers, every outcome enumerated under a uniform q:
    with group_size = K the gradient is the mean of the two exact per-prompt JS gradients; one batch-wide Z
    (group_size=None) gets it wrong."""
    g = torch.Generator().manual_seed(2)
    k, beta = 4, 0.5
    theta = torch.randn(2, k, generator=g, dtype=D)
    ref = torch.log_softmax(torch.randn(2, k, generator=g, dtype=D), -1)
    rewards = torch.randn(2, k, generator=g, dtype=D) + torch.tensor([[0.0], [3.0]], dtype=D)  # prompt 2: Z much larger
    q = torch.full((2 * k,), -math.log(k), dtype=D)

    def surrogate_grad(group_size):
        th = theta.clone().requires_grad_(True)
        loss, stats = fdpg_loss(torch.log_softmax(th, -1).flatten(), q, ref.flatten(), rewards.flatten(), beta, "js",
                                group_size=group_size)
        return torch.autograd.grad(loss, th)[0], stats

    th = theta.clone().requires_grad_(True)
    pi = torch.softmax(th, -1)
    p = torch.softmax(ref + rewards / beta, -1)
    exact = (p * _js(pi / p)).sum(-1).mean()  # the batch mean over both prompts' samples
    (expected,) = torch.autograd.grad(exact, th)
    grad, stats = surrogate_grad(k)
    assert torch.allclose(grad, expected, atol=1e-12)
    assert stats["pseudo_rewards"].shape == (2 * k,)
    wrong, _ = surrogate_grad(None)
    assert not torch.allclose(wrong, expected, atol=1e-3)


def test_fdpg_group_size_must_divide():
    with pytest.raises(ValueError, match="groups"):
        fdpg_loss(torch.zeros(6), torch.zeros(6), torch.zeros(6), torch.zeros(6), 1.0, group_size=4)


def test_windowed_baseline():
    b = WindowedBaseline(3)
    assert b.value is None
    b.update(torch.tensor([1.0, 2.0]))
    assert b.value == pytest.approx(1.5)
    b.update(torch.tensor([3.0, 4.0]))  # keeps the last three
    assert b.value == pytest.approx(3.0)
    assert WindowedBaseline(0).value is None


# ---- SPO's reward ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pref_task():
    return SyntheticPreferenceTask(max_value=9, spread=3, train_size=8, val_size=4, test_size=4)


def test_spo_win_rate_on_a_hand_built_group(pref_task):
    """Answer 10 (spread 3): oracle rewards 0, -1/3, -1/3 (a tie), -1.5 (off the candidates); then a group of 2."""
    fn = REWARDS["spo_win_rate"](pref_task)
    rewards = RewardSet([{"name": "spo_win_rate"}], pref_task)
    total, parts = rewards(["4+6="] * 4, ["10", "11", "9", "42"], group_size=4, answer=["10"] * 4)
    # "10" beats all three; "11" and "9" beat "42", tie each other (1/2), lose to "10"; "42" loses all
    assert total.tolist() == pytest.approx([1.0, 0.5, 0.5, 0.0])
    assert parts["spo_win_rate"].mean().item() == pytest.approx(0.5)
    wins = fn(["3+4=", "3+4=", "4+6=", "4+6="], ["5", "6", "10", "10"], group_size=2, answer=["7", "7", "10", "10"])
    assert wins == pytest.approx([0.0, 1.0, 0.5, 0.5])  # 6 is closer to 7; identical answers tie


def test_spo_win_rate_with_a_soft_judge():
    """A Bradley-Terry judge: each reward is the mean preference probability against the rest of the group."""

    class Scores(Judge):
        def score(self, prompts, completions, **_):
            return torch.tensor([float(c) for c in completions])

    judge = Scores(link="bradley_terry", temperature=1.0)
    wins = group_win_rates(judge, ["x"] * 3, ["0", "1", "3"], group_size=3)
    s = torch.sigmoid
    expected = [(s(torch.tensor(-1.0)) + s(torch.tensor(-3.0))) / 2, (s(torch.tensor(1.0)) + s(torch.tensor(-2.0))) / 2,
                (s(torch.tensor(3.0)) + s(torch.tensor(2.0))) / 2]
    assert wins.tolist() == pytest.approx([e.item() for e in expected])
    assert wins.sum().item() == pytest.approx(1.5)


def test_spo_win_rate_falls_back_to_the_verifier_and_judge_score(pref_task):
    from workbench.tasks.arithmetic import ArithmeticTask

    arithmetic = ArithmeticTask(train_size=4, val_size=2, test_size=2)
    fn = REWARDS["spo_win_rate"](arithmetic)  # no oracle: the correctness verifier judges
    assert fn(["1+1="] * 2, ["2", "3"], group_size=2, answer=["2", "2"]) == [1.0, 0.0]
    score = REWARDS["judge_score"](pref_task)
    assert score(["4+6="] * 2, ["10", "8"], answer=["10", "10"]) == pytest.approx([0.0, -2 / 3])


def test_spo_reward_bad_judge_names_its_field(pref_task):
    with pytest.raises(ConfigError, match=r"method.rewards\[0\].judge"):
        RewardSet([{"name": "spo_win_rate", "judge": {"name": "nope"}}], pref_task)
    from workbench.tasks.arithmetic import ArithmeticTask

    with pytest.raises(ConfigError, match=r"method.rewards\[0\].judge"):  # the arithmetic task has no oracle
        RewardSet([{"name": "spo_win_rate", "judge": "oracle"}], ArithmeticTask(train_size=4, val_size=2, test_size=2))


# ---- the geometric-mixture sampler ----------------------------------------------------------------------------------
def test_geometric_mixture_sampler_endpoints():
    """Greedy decoding: coefficient 0 decodes the policy, 1 decodes the reference (KV caches vs HF generate)."""
    from test_policy import PROMPTS, make_policy

    from workbench.policy.logprobs import Reference
    from workbench.policy.sampler import encode_prompts, sample

    policy, other = make_policy(seed=0), make_policy(seed=1)
    reference = Reference(other.model, use_adapters_off=False)
    tok = policy.tokenizer
    ids, mask = encode_prompts(tok, PROMPTS, "cpu")
    mine = sample_geometric_mixture(policy.model, reference, tok, ids, mask, 0.0, max_new_tokens=6, temperature=0.0)
    theirs = sample(policy.model, tok, PROMPTS, max_new_tokens=6, temperature=0.0)
    ref_greedy = sample(other.model, tok, PROMPTS, max_new_tokens=6, temperature=0.0)
    assert mine.texts == theirs.texts and torch.equal(mine.completion_mask, theirs.completion_mask)
    mixed = sample_geometric_mixture(policy.model, reference, tok, ids, mask, 1.0, max_new_tokens=6, temperature=0.0)
    assert mixed.texts == ref_greedy.texts
    assert mine.texts != ref_greedy.texts  # the two models do differ


def test_geometric_mixture_sampler_with_lora_reference():
    """LoRA: the reference is the same model with adapters off; coefficient 1 decodes the base, 0 the adapted model."""
    from test_policy import LORA, PROMPTS, make_policy

    from workbench.policy.logprobs import Reference
    from workbench.policy.models import apply_lora
    from workbench.policy.sampler import encode_prompts, sample

    policy = make_policy(seed=0)
    base_greedy = sample(policy.model, policy.tokenizer, PROMPTS, max_new_tokens=6, temperature=0.0).texts
    policy = apply_lora(policy, LORA)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 1.0)
    adapted_greedy = sample(policy.model, policy.tokenizer, PROMPTS, max_new_tokens=6, temperature=0.0).texts
    assert adapted_greedy != base_greedy
    reference = Reference(policy.model, use_adapters_off=True)
    ids, mask = encode_prompts(policy.tokenizer, PROMPTS, "cpu")
    at = lambda c: sample_geometric_mixture(policy.model, reference, policy.tokenizer, ids, mask, c, 6, 0.0).texts  # noqa: E731
    assert at(1.0) == base_greedy and at(0.0) == adapted_greedy


# ---- config errors ----------------------------------------------------------------------------------------------------
BAD = [
    ("nash_md", "method.pg_loss=ppo", "method.pg_loss"),
    ("nash_md", "method.judge=null", "method.judge"),
    ("nash_md", "method.mixture_coef=1.5", "method.mixture_coef"),
    ("nash_md", "method.samples_per_prompt=0", "method.samples_per_prompt"),
    ("p3o", "method.samples_per_prompt=3", "method.samples_per_prompt"),
    ("p3o", "method.clip=both", "method.clip"),
    ("p3o", "method.clip_eps=-0.1", "method.clip_eps"),
    ("copg", "method.beta=0", "method.beta"),
    ("fdpg", "method.samples_per_prompt=1", "method.samples_per_prompt"),
    ("fdpg", "method.divergence=hellinger", "method.divergence"),
    ("fdpg", "method.baseline_window=-1", "method.baseline_window"),
    ("fdpg", "method.inner_iterations=0", "method.inner_iterations"),
    ("salsa", "method.reference_soup.seeds=[0]", "method.reference_soup.seeds"),
    ("salsa", "method.reference_soup.seeds=[1,1]", "method.reference_soup.seeds"),
    ("salsa", "method.reference_soup.shared_init=maybe", "method.reference_soup.shared_init"),
    ("salsa", "+method.reference_soup.weights=[0.5,0.5]", "method.reference_soup"),
    ("salsa", "method.init=scratch", "method.init"),
]


@pytest.mark.parametrize("method,override,field", BAD)
def test_bad_fields_name_themselves(method, override, field, tmp_path):
    cfg = compose_cfg([f"method={method}", "task=synthetic_preference", override], tmp_path)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.field == field, str(e.value)


# ---- fast runs through train.run ---------------------------------------------------------------------------------------
PAIRWISE = ["nash_md", "p3o", "copg", "fdpg"]


def _run(method: str, tmp_path: Path, extra: list[str]) -> tuple[dict, object]:
    cfg = compose_cfg([f"method={method}", *FAST, "task=synthetic_preference", *FAST_BASE, *extra], tmp_path / "run",
                      f"sqlite:///{tmp_path / 'mlflow.db'}")
    return run(cfg), cfg


def _history(cfg, run_id: str, key: str) -> list[float]:
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.parametrize("method", PAIRWISE)
def test_pairwise_fast_run_logs_the_preference_metrics(method, tmp_path):
    summary, cfg = _run(method, tmp_path, ["method.inner_iterations=2"] if method == "p3o" else [])
    m = summary["metrics"]
    assert m["steps"] == 4
    for prefix in ("test", "test_before"):
        for key in ("win_rate", "judge_reward", "kl", "reward_accuracy", "sample_accuracy"):
            assert math.isfinite(m[f"{prefix}/{key}"]), (prefix, key)
        assert 0.0 <= m[f"{prefix}/win_rate"] <= 1.0
    batches = 4 // cfg.method.inner_iterations  # trainer.max_steps counts optimizer steps
    assert len(_history(cfg, summary["mlflow_run_id"], "train/loss")) == batches
    assert len(_history(cfg, summary["mlflow_run_id"], "train/sampled_kl")) == batches


@pytest.mark.parametrize("method", ["spo", "salsa"])
def test_group_rl_fast_run(method, tmp_path):
    summary, cfg = _run(method, tmp_path, ["method.group_size=2"])
    m = summary["metrics"]
    assert m["steps"] == 4 and 0.0 <= m["test/accuracy"] <= 1.0 and 0.0 <= m["test_before/accuracy"] <= 1.0
    if method == "salsa":  # the start (and reference) is the uniform average of the two member SFT runs
        from safetensors.torch import load_file

        tags = mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(summary["mlflow_run_id"]).data.tags
        members = [load_file(Path(p) / "model.safetensors") for p in json.loads(tags["workbench.reference_soup"])]
        soup = load_file(Path(tags["workbench.sft_base_path"]) / "model.safetensors")
        assert len(members) == 2 and any(not torch.equal(members[0][k], members[1][k]) for k in soup)
        for k in soup:
            assert torch.allclose(soup[k], (members[0][k].double() + members[1][k].double()).div(2).float(), atol=1e-6)


# ---- short seeded runs: the oracle win rate (or accuracy) rises over the SFT start -------------------------------------
SMALL = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=2",
         "model.num_kv_heads=1", "task=synthetic_preference", "task.max_value=14", "task.train_size=2000",
         "task.val_size=16", "task.test_size=96", "method.base.max_steps=300", "method.base.val_check_interval=300",
         "method.base.batch_size=32", "trainer.max_steps=150", "method.val_check_interval=150",
         "trainer.progress_bar=false", "trainer.num_threads=1", "seed=0"]
SETTINGS = {  # measured: see the README rows
    "nash_md": ["method.samples_per_prompt=4", "method.lr=1e-3"],
    "p3o": ["method.samples_per_prompt=4", "method.lr=1e-3"],
    "copg": ["method.samples_per_prompt=4", "method.lr=1e-3"],
    "fdpg": ["method.samples_per_prompt=4", "method.lr=1e-3"],
    "spo": ["method.group_size=4", "method.batch_size=32", "method.lr=1e-3"],
    "salsa": ["method.group_size=4", "method.batch_size=32", "method.lr=1e-3"],
}


@pytest.fixture(scope="module")
def small_sft_base(tmp_path_factory):
    """Train the shared SFT warm start once, so every method below starts from the cached base and draws the same
    random numbers whichever test runs first (training the base in-process would shift the RNG of that run)."""
    path = tmp_path_factory.mktemp("small-base")
    run(compose_cfg(["method=p3o", *SMALL, "trainer.max_steps=1", "method.val_check_interval=1"], path / "run",
                    f"sqlite:///{path / 'mlflow.db'}"))


def _trained(method: str, tmp_path: Path) -> tuple[dict, list[float]]:
    cfg = compose_cfg([f"method={method}", *SMALL, *SETTINGS[method]], tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}")
    summary = run(cfg)
    return summary["metrics"], _history(cfg, summary["mlflow_run_id"], "train/accuracy")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.mark.slow
@pytest.mark.parametrize("method", PAIRWISE)
def test_pairwise_method_raises_the_oracle_win_rate(method, tmp_path, small_sft_base):
    """At the start the policy is the reference, so its expected win rate is exactly 1/2; test_before/win_rate is that
    estimated from 96 prompts (seed 0: 0.526; seeds 1, 2: 0.510, 0.609, so +-0.05 is noise).
    Measured after 150 steps, seed 0: win rate nash_md 0.651, p3o 0.661, copg 0.615, fdpg 0.724; judge reward
    -0.913 -> -0.542, -0.524, -0.576, -0.575; sampled accuracy, first vs last 20 steps, +0.11 to +0.12."""
    m, train_accuracy = _trained(method, tmp_path)
    assert abs(m["test_before/win_rate"] - 0.5) < 0.15  # the SFT start against itself
    assert m["test/win_rate"] > 0.55, m
    assert m["test/judge_reward"] > m["test_before/judge_reward"] + 0.15, m
    assert _mean(train_accuracy[-20:]) > _mean(train_accuracy[:20]) + 0.05


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spo", "salsa"])
def test_group_rl_preference_method_raises_accuracy(method, tmp_path, small_sft_base):
    """Measured, seed 0: greedy test accuracy spo 0.146 -> 0.229, salsa (from its soup) 0.281 -> 0.417; sampled
    accuracy, first vs last 20 steps, +0.13 and +0.18. (Seed 2: greedy +0.02 and +0.01 only, sampled +0.13, +0.16.)"""
    m, train_accuracy = _trained(method, tmp_path)
    assert m["test/accuracy"] > m["test_before/accuracy"] + 0.03, m
    assert _mean(train_accuracy[-20:]) > _mean(train_accuracy[:20]) + 0.05
