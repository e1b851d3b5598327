"""Our group-RL losses against TRL 1.16's own loss code (``GRPOTrainer._compute_loss``), on identical inputs.

A real ``GRPOTrainer`` is built on a 1-layer, 16-wide random Llama on CPU (no generation, no training loop) and its
``_compute_loss(model, inputs)`` is called on a hand-made ``inputs`` dict (prompt/completion ids and masks,
advantages, old and reference per-token log-probs, ``num_items_in_batch``). TRL computes the per-token log-probs
from the model itself; ours come from the same model through the trainer's ``_get_per_token_logps_and_entropies``
(the same forward), and go through ``workbench.methods.group_rl.losses.grpo_loss``. Both the loss value and the
gradient on every model parameter must agree (1e-6 absolute on the loss).

Covered: TRL ``loss_type`` grpo (without a KL term, with a k3 KL term, and with TRL's default importance-ratio
corrected KL ``use_bias_correction_kl``), dr_grpo, dapo, bnpo, and GSPO
(``importance_sampling_level="sequence"`` with grpo), plus TRL's clip-ratio metrics against ours.
Nothing is skipped: TRL is a test-only extra of this project and the test fails if it is missing.
"""

from __future__ import annotations

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is the reference implementation; install the test extra")

from datasets import Dataset  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from workbench.methods.group_rl.losses import grpo_loss  # noqa: E402
from workbench.policy.tokenizer import train_tokenizer  # noqa: E402

MAX_COMPLETION = 9  # TRL's max_completion_length: Dr. GRPO's constant normaliser
B, TP, TC = 6, 4, 7  # 3 prompts x 2 completions, prompt length, completion width


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["1 + 2 = 3", "hello world", "abc"], vocab_size=64)


def _trainer(tmp_path, tokenizer, **overrides) -> GRPOTrainer:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg)
    kwargs = dict(output_dir=str(tmp_path / "trl"), bf16=False, use_cpu=True, report_to=[], num_generations=2,
                  per_device_train_batch_size=B, max_completion_length=MAX_COMPLETION, beta=0.0, epsilon=0.2,
                  epsilon_high=0.28, save_strategy="no", logging_steps=1)
    kwargs.update(overrides)
    beta = kwargs.pop("beta")
    kwargs["beta"] = 0.0  # beta != 0 makes TRL load a reference model from the hub by name; we hand it ref log-probs
    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
                          args=GRPOConfig(**kwargs), train_dataset=Dataset.from_dict({"prompt": ["a", "b", "c"]}),
                          processing_class=tokenizer)
    trainer.beta = beta  # _compute_loss reads self.beta and inputs["ref_per_token_logps"], nothing else
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which we do not run
    trainer.model.train()
    return trainer


def _inputs(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(3, vocab, (B, TP), generator=g)
    prompt_mask = torch.ones(B, TP, dtype=torch.long)
    prompt_mask[0, 0] = 0  # left padding on one prompt
    completion_ids = torch.randint(3, vocab, (B, TC), generator=g)
    lengths = torch.tensor([7, 3, 5, 1, 6, 4])
    completion_mask = (torch.arange(TC)[None, :] < lengths[:, None]).long()
    advantages = torch.tensor([1.2, -0.7, 0.4, -1.5, 0.9, -0.3])
    return dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                completion_mask=completion_mask, advantages=advantages,
                num_items_in_batch=completion_mask.sum().float())


def _logps(trainer, inputs):
    input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
    attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention_mask, TC)
    return logps


def _add_old_and_ref(trainer, inputs):
    """Old log-probs off the current policy by up to +-1 nat, so both clip sides are hit; a reference too."""
    with torch.no_grad():
        current = _logps(trainer, inputs)
    g = torch.Generator().manual_seed(2)
    inputs["old_per_token_logps"] = current + 2 * (torch.rand(current.shape, generator=g) - 0.5)
    inputs["ref_per_token_logps"] = current + 0.3 * (torch.rand(current.shape, generator=g) - 0.5)
    return inputs


def _grads(model):
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


CASES = {
    # name: (TRL config overrides, our grpo_loss kwargs)
    "grpo": (dict(loss_type="grpo"), dict(agg="seq_mean_token_mean")),
    "grpo_kl": (dict(loss_type="grpo", beta=0.04, use_bias_correction_kl=False),
                dict(agg="seq_mean_token_mean", beta=0.04)),
    "grpo_kl_is_corrected": (dict(loss_type="grpo", beta=0.04),  # TRL 1.16 default: KL times the IS ratio
                             dict(agg="seq_mean_token_mean", beta=0.04, kl_ratio_correction=True)),
    "dr_grpo": (dict(loss_type="dr_grpo"), dict(agg="seq_mean_token_sum_norm", max_length=MAX_COMPLETION)),
    "dapo": (dict(loss_type="dapo"), dict(agg="token_mean")),
    "bnpo": (dict(loss_type="bnpo"), dict(agg="token_mean")),
    "gspo": (dict(loss_type="grpo", importance_sampling_level="sequence", epsilon=3e-4, epsilon_high=4e-4),
             dict(agg="seq_mean_token_mean", importance_level="sequence")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient_match_trl(case, tmp_path, tokenizer):
    trl_over, ours = CASES[case]
    trainer = _trainer(tmp_path, tokenizer, **trl_over)
    inputs = _add_old_and_ref(trainer, _inputs(len(tokenizer)))
    eps_low, eps_high = trainer.epsilon_low, trainer.epsilon_high

    trainer.model.zero_grad()
    trl_loss = trainer._compute_loss(trainer.model, inputs)
    trl_loss.backward()
    trl_grads = _grads(trainer.model)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if v}

    trainer.model.zero_grad()
    logps = _logps(trainer, inputs)
    loss, stats = grpo_loss(
        logps, inputs["old_per_token_logps"], inputs["advantages"], inputs["completion_mask"].float(),
        ref_logprobs=inputs["ref_per_token_logps"] if trl_over.get("beta") else None,
        eps_low=eps_low, eps_high=eps_high, **ours,
    )
    loss.backward()
    our_grads = _grads(trainer.model)

    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-6)
    for ours_g, trl_g in zip(our_grads, trl_grads):
        assert torch.allclose(ours_g, trl_g, atol=1e-6, rtol=1e-5)
    # TRL's clip metrics are ours
    assert stats["clip_frac_low"].item() == pytest.approx(metrics["clip_ratio/low_mean"], abs=1e-6)
    assert stats["clip_frac_high"].item() == pytest.approx(metrics["clip_ratio/high_mean"], abs=1e-6)
    assert stats["clip_frac_region"].item() == pytest.approx(metrics["clip_ratio/region_mean"], abs=1e-6)
    if trl_over.get("beta") and not ours.get("kl_ratio_correction"):  # TRL logs the corrected KL; we log the raw one
        assert stats["kl"].item() == pytest.approx(metrics["kl"], abs=1e-6)
    if case in ("grpo", "dapo"):  # the +-1 nat perturbation must actually exercise clipping on both sides
        assert stats["clip_frac_low"] > 0 and stats["clip_frac_high"] > 0
