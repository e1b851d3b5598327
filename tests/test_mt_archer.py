"""ArCHer: the critic targets, critic / actor losses and Polyak update on hand values; the turn replay buffer
(transitions from episodes, FIFO eviction, seeded sampling, checkpoint round trip); a short real run."""

from __future__ import annotations

import mlflow
import pytest
import torch

from workbench.errors import ConfigError
from workbench.methods.multi_turn.archer import (actor_loss, archer_advantages, critic_loss, critic_targets,
                                                 q_and_v, soft_update, validate_archer)
from workbench.methods.multi_turn.replay import TurnReplayBuffer
from workbench.methods.multi_turn.rollout import Episodes, Turns
from workbench.policy.sampler import Rollout
from workbench.train import run

PAD = 0


# ---- pure functions on hand values -------------------------------------------------------------------------
def test_critic_targets_pair_heads_and_mask_done():
    rewards = torch.tensor([1.0, 0.0])
    dones = torch.tensor([True, False])
    next_v = torch.tensor([[5.0, 7.0], [2.0, 4.0]])  # target V1, V2 at s'
    pi_q = torch.tensor([[0.3, 0.1], [0.6, 0.9]])  # target Q1, Q2 at (s, a_pi)
    q_t, v_t = critic_targets(rewards, dones, next_v, pi_q, gamma=0.5)
    # done row: r only; live row: r + 0.5 * V_i(s') per head (no min across the twins)
    assert torch.allclose(q_t, torch.tensor([[1.0, 1.0], [1.0, 2.0]]))
    assert torch.equal(v_t, pi_q)  # V_i learns from Q_i_target(s, a_pi), head by head


def test_critic_loss_sums_the_four_head_mses():
    q = torch.tensor([[1.0, 0.0], [3.0, 1.0]], requires_grad=True)
    v = torch.tensor([[0.0, 2.0], [0.0, 0.0]], requires_grad=True)
    q_t = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    v_t = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    loss = critic_loss(q, v, q_t, v_t)
    # q1: (1 + 4) / 2, q2: 0, v1: 1 / 2, v2: (1 + 4) / 2
    assert loss.item() == pytest.approx(2.5 + 0.0 + 0.5 + 2.5)
    loss.backward()
    assert torch.allclose(q.grad, torch.tensor([[1.0, 0.0], [2.0, 0.0]]))  # d/dq (q - t)^2 / B = (q - t)


def test_advantage_is_min_q_minus_min_v():
    q = torch.tensor([[1.0, 0.5], [-1.0, 2.0]])
    v = torch.tensor([[0.2, 0.4], [0.0, -3.0]])
    assert torch.allclose(archer_advantages(q, v), torch.tensor([0.5 - 0.2, -1.0 + 3.0]))


def test_actor_loss_weights_utterance_logprob_by_advantage():
    logprobs = torch.tensor([[-1.0, -2.0, 9.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # the 9.0 is padding
    adv = torch.tensor([2.0, -1.0], requires_grad=True)
    loss = actor_loss(logprobs, mask, adv)
    # -mean(2 * (-3), -1 * (-0.5)) = -(-6 + 0.5) / 2
    assert loss.item() == pytest.approx(2.75)
    loss.backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[-1.0, -1.0, 0.0], [0.5, 0.0, 0.0]]))
    assert adv.grad is None  # the advantage is a constant weight


def test_soft_update_is_polyak():
    online, target = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        online.weight.fill_(1.0), online.bias.fill_(-2.0)
        target.weight.fill_(0.0), target.bias.fill_(2.0)
    soft_update(target, online, tau=0.1)
    assert target.weight.item() == pytest.approx(0.1)
    assert target.bias.item() == pytest.approx(0.9 * 2.0 + 0.1 * -2.0)
    assert online.weight.item() == 1.0  # the online critic is untouched


def test_one_forward_reads_the_same_q_and_v_as_separate_passes():
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.methods.multi_turn.critic import ValueModel
    from workbench.policy.sampler import left_pad

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64)
    critic = ValueModel(LlamaForCausalLM(config), heads=4).eval()
    torch.nn.init.normal_(critic.head.weight)  # zero-initialised heads would make every value 0
    context_ids = torch.tensor([[0, 0, 5, 6], [3, 4, 5, 6]])
    context_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    action_ids = torch.tensor([[7, 0, 0], [8, 9, 1]])
    action_mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    with torch.no_grad():
        q, v = q_and_v(critic, context_ids, context_mask, action_ids, action_mask)
        v_alone = critic.state_values(context_ids, context_mask)[:, 2:]
        # Q alone: a forward over each row's (s, a) tokens as one left-padded sequence, read at its last token
        joined = [torch.cat([c[cm > 0], a[am > 0]]).tolist()
                  for c, cm, a, am in zip(context_ids, context_mask, action_ids, action_mask)]
        q_alone = critic.state_values(*left_pad(joined, 0, "cpu"))[:, :2]
    assert torch.allclose(v, v_alone, atol=1e-5) and torch.allclose(q, q_alone, atol=1e-5)
    assert not torch.allclose(q, v)


# ---- replay buffer ------------------------------------------------------------------------------------------
def _episodes(contexts, actions, episode, rewards, dones) -> Episodes:
    """Hand-made turn rows: contexts left-padded, actions right-padded with PAD (token ids > 0)."""
    P = max(map(len, contexts))
    T = max(map(len, actions))
    prompt_ids = torch.tensor([[PAD] * (P - len(c)) + c for c in contexts])
    prompt_mask = torch.tensor([[0] * (P - len(c)) + [1] * len(c) for c in contexts])
    completion_ids = torch.tensor([a + [PAD] * (T - len(a)) for a in actions])
    completion_mask = torch.tensor([[1] * len(a) + [0] * (T - len(a)) for a in actions])
    n = len(contexts)
    rollout = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, [""] * n, torch.zeros(n, dtype=torch.bool))
    E = max(episode) + 1
    turns = Turns(rollout, torch.tensor(episode), torch.zeros(n, dtype=torch.long), torch.tensor(rewards),
                  torch.zeros(n), torch.tensor(dones), torch.ones(n, dtype=torch.bool), [""] * n)
    z = torch.zeros(E)
    return Episodes(turns, torch.arange(E), z, z.bool(), z.long(), z.bool(), z.long())


def _two_episodes() -> Episodes:
    # episode 0: two turns; episode 1: one turn
    return _episodes(contexts=[[5], [5, 6, 7], [9, 9]], actions=[[6], [8, 2], [3]], episode=[0, 0, 1],
                     rewards=[0.0, 1.0, -0.5], dones=[False, True, True])


def test_buffer_links_next_contexts_and_pads():
    buf = TurnReplayBuffer(capacity=10, seed=0)
    assert buf.add(_two_episodes()) == 3
    b = buf.batch(torch.tensor([0, 1, 2]), PAD, "cpu")
    assert b["context_ids"].tolist() == [[0, 0, 5], [5, 6, 7], [0, 9, 9]]
    assert b["context_mask"].tolist() == [[0, 0, 1], [1, 1, 1], [0, 1, 1]]
    assert b["action_ids"].tolist() == [[6, 0], [8, 2], [3, 0]]
    assert b["action_mask"].tolist() == [[1, 0], [1, 1], [1, 0]]
    # the first turn's next state is the second turn's context; done turns point at their own (masked) context
    assert b["next_ids"].tolist() == [[5, 6, 7], [5, 6, 7], [0, 9, 9]]
    assert b["rewards"].tolist() == [0.0, 1.0, -0.5]
    assert b["dones"].tolist() == [False, True, True]


def test_buffer_evicts_oldest_first():
    buf = TurnReplayBuffer(capacity=4, seed=0)
    buf.add(_two_episodes())  # transitions a0 a1 b0
    buf.add(_two_episodes())  # a0' fills slot 3; a1' and b0' overwrite a0 and a1
    assert len(buf) == 4 and buf.added == 6 and buf.position == 2
    assert [float(r) for r in buf.rewards] == [1.0, -0.5, -0.5, 0.0]
    assert [c.tolist() for c in buf.context] == [[5, 6, 7], [9, 9], [9, 9], [5]]


def test_buffer_sampling_is_seeded_and_survives_a_checkpoint(tmp_path):
    a, b = TurnReplayBuffer(capacity=8, seed=3), TurnReplayBuffer(capacity=8, seed=3)
    for buf in (a, b):
        buf.add(_two_episodes())
        buf.add(_two_episodes())
    assert torch.equal(a.sample_indices(20), b.sample_indices(20))
    other = TurnReplayBuffer(capacity=8, seed=4)
    other.add(_two_episodes())
    other.add(_two_episodes())
    assert not torch.equal(TurnReplayBuffer(8, seed=3).generator.get_state(), other.generator.get_state())

    a.sample_indices(5)  # advance the generator, then save mid-stream
    path = tmp_path / "replay.pt"
    torch.save({"replay": a.state_dict()}, path)
    restored = TurnReplayBuffer(capacity=8, seed=99)
    restored.load_state_dict(torch.load(path, weights_only=True)["replay"])
    assert len(restored) == len(a) and restored.position == a.position and restored.added == a.added
    idx = torch.arange(len(a))
    for key, value in a.batch(idx, PAD, "cpu").items():
        assert torch.equal(value, restored.batch(idx, PAD, "cpu")[key]), key
    assert torch.equal(a.sample_indices(30), restored.sample_indices(30))  # the same draws continue
    with pytest.raises(ValueError, match="capacity"):
        TurnReplayBuffer(capacity=5).load_state_dict(a.state_dict())


def test_empty_buffer_round_trip_and_sampling_error():
    buf = TurnReplayBuffer(capacity=3)
    state = buf.state_dict()
    restored = TurnReplayBuffer(capacity=3)
    restored.load_state_dict(state)
    assert len(restored) == 0
    with pytest.raises(ValueError, match="empty"):
        restored.sample_indices(1)


# ---- a real (tiny) run ------------------------------------------------------------------------------------------
def test_archer_run_logs_critic_and_actor_metrics(fast_cfg, tmp_path):
    cfg = fast_cfg("archer", ["task=gridworld", "method.critic_warmup_steps=2", "method.critic_updates=2",
                              "method.actor_updates=1", "method.update_batch_size=8", "method.minibatch_size=4"])
    summary = run(cfg)
    assert summary["metrics"]["steps"] == 4  # one Lightning step per ArCHer iteration, however many optimizer steps inside
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    run_id = summary["mlflow_run_id"]
    keys = set(client.get_run(run_id).data.metrics)
    expected = {"train/critic_loss", "train/q_mean", "train/v_mean", "train/advantage_abs", "train/buffer_size",
                "train/policy_loss", "train/success_rate", "train/return", "test/success_rate", "test_before/success_rate",
                "train/lr", "train/critic_lr"}
    assert expected <= keys, sorted(expected - keys)
    history = {k: [m.value for m in sorted(client.get_metric_history(run_id, f"train/{k}"), key=lambda m: m.step)]
               for k in ("buffer_size", "actor_active", "rows")}
    assert history["actor_active"] == [0.0, 0.0, 1.0, 1.0]  # two critic-only warm-up iterations
    assert history["buffer_size"] == list(torch.tensor(history["rows"]).cumsum(0).tolist())
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))[-1]
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert int(state["archer_replay"]["rewards"].numel()) == history["buffer_size"][-1]
    assert any(k.startswith("target_critic.") for k in state["state_dict"])


def test_bad_archer_settings_name_the_field(fast_cfg):
    cfg = fast_cfg("archer", ["task=guess_number"])
    validate_archer(cfg.method, cfg.trainer)  # the defaults pass; ArcherModule.__init__ runs this first
    bad = [("tau", 0.0), ("gamma", 1.5), ("critic_updates", 0), ("actor_updates", -1), ("critic_lr", 0.0),
           ("minibatch_size", 0), ("update_batch_size", 2.5), ("buffer_capacity", 0)]
    for key, value in bad:
        method = cfg.method.copy()
        method[key] = value
        with pytest.raises(ConfigError) as info:
            validate_archer(method, cfg.trainer)
        assert info.value.field == f"method.{key}"
    trainer = cfg.trainer.copy()
    trainer.devices = 2  # trainer=ddp_cpu
    with pytest.raises(ConfigError) as info:
        validate_archer(cfg.method, trainer)
    assert info.value.field == "trainer.devices"
