"""Our offline preference losses and step against TRL 1.16's own loss code, on identical token sequences and weights.

Two copies of one 1-layer, 16-wide random Llama (and of a frozen reference, perturbed so that h(y) != 0) are built
on CPU. One copy sits in a real ``PreferenceModule``; the other in a TRL trainer. TRL gets *our* token ids (from the
module's ``train_collate``: prompts left-padded, completions + EOS right-padded, rows interleaved chosen/rejected)
through its own collator (``DataCollatorForPreference`` / ``DataCollatorForUnpairedPreference``: prompt+completion
right-padded, batch laid out [chosen; rejected]) and computes its loss with its own method:

* DPO ``loss_type`` sigmoid, ipo (length-normalized), robust, hinge, and sigmoid + sft with weights:
  ``DPOTrainer._compute_loss``;
* SimPO: ``CPOTrainer(loss_type="simpo", cpo_alpha=0).get_batch_loss_metrics`` (TRL's ``simpo_gamma`` is the
  absolute margin; ours is ``gamma_beta_ratio * beta``);
* KTO: ``KTOTrainer._compute_loss``, fed our unpaired layout and our mismatched (x_i, y') completions for z0.

Two levels are checked in each case:

1. The loss, as ``tests/test_trl_parity.py`` does for GRPO: our pure loss functions applied to the per-sequence
   log-probs of TRL's own forward (its fused LM head, same model copy) must give TRL's loss to 1e-6 and the same
   gradient on every parameter (atol 1e-6, rtol 1e-5).
2. The whole step: ``PreferenceModule.training_step`` (our tokenization, interleaved rows, ``token_logprobs`` with
   ``logits_to_keep``, live reference, loss) on the other copy must give TRL's loss and gradients up to float32
   forward noise (different padding layout and LM head: observed <= 3.4e-6 on the loss and 1.1e-6 on any gradient
   entry; checked at 1e-5, gradients atol 1e-5 / rtol 1e-4), and the same per-sequence log-probs.
   Level 1 came out bitwise equal when written.

Each case also computes a deliberately wrong variant (beta off by 10 %, the [chosen; rejected] halves read from our
interleaved rows, SimPO's gamma not scaled by beta, KTO without its reference point) and asserts that it misses
TRL's loss by more than 1e-4, i.e. by far more than either tolerance. TRL is a test-only extra (skipped without it).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is the reference implementation; install the test extra")

from datasets import Dataset  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: E402
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference  # noqa: E402

from workbench.methods.preference.losses import PairLogps, combined_loss, kto_kl_baseline, kto_loss  # noqa: E402
from workbench.methods.preference.module import PreferenceModule  # noqa: E402
from workbench.policy.models import Policy  # noqa: E402
from workbench.policy.tokenizer import train_tokenizer  # noqa: E402

ROWS = [  # varied prompt and completion lengths, so both padding layouts are exercised
    {"prompt": "1 + 2 =", "chosen": " 3", "rejected": " 12 or 21"},
    {"prompt": "hello", "chosen": " world", "rejected": " abc abc"},
    {"prompt": "abc 1 + 2", "chosen": " hello world", "rejected": "!"},
    {"prompt": "2 + 2 = 4, 3 + 3 =", "chosen": " 6", "rejected": " 33"},
]
B = len(ROWS)
LOSS_TOL = 1e-6                        # level 1: same forward, our loss vs TRL's
STEP_TOL = dict(atol=1e-5, rtol=1e-4)  # level 2: our forward vs TRL's (float32 noise, observed <= 3.4e-6)
WRONG = 1e-4                           # a wrong variant must miss TRL's loss by more than this


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["1 + 2 = 3", "hello world", "abc", "2 + 2 = 4, 3 + 3 = 6"], vocab_size=64)


def _module(tokenizer, **method) -> PreferenceModule:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg)
    spec = dict(loss_type="sigmoid", loss_weights=None, beta=0.5, loss_params={}, reference="live", log_kl=True,
                shared_prefix=False, max_prompt_length=32, max_completion_length=16, judge=None)
    spec.update(method)
    module = PreferenceModule(Policy(model, tokenizer), None, OmegaConf.create(spec))
    if module.reference is not None:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in module.reference._model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    module.model.train()
    return module


def _batch(module):
    return module.train_collate([dict(r, row_index=i) for i, r in enumerate(ROWS)])


def _unpad(ids: torch.Tensor, mask: torch.Tensor) -> list[int]:
    return ids[mask.bool()].tolist()


def _pair_examples(batch) -> list[dict]:
    """The token ids of our collated batch as TRL's tokenized pair examples (prompt_ids / chosen_ids / rejected_ids)."""
    return [{"prompt_ids": _unpad(batch["prompt_ids"][i], batch["prompt_mask"][i]),
             "chosen_ids": _unpad(batch["completion_ids"][i], batch["completion_mask"][i]),
             "rejected_ids": _unpad(batch["completion_ids"][i + 1], batch["completion_mask"][i + 1])}
            for i in range(0, batch["prompt_ids"].shape[0], 2)]


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}


def _assert_same_grads(ours: dict, theirs: dict, atol: float, rtol: float) -> None:
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], atol=atol, rtol=rtol), name
    assert any(g.abs().sum() > 0 for g in ours.values())


def _module_step(module, batch) -> tuple[float, dict]:
    """What Lightning runs for one step of ours: training_step, then backward."""
    module.model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log() outside a Trainer only warns
        loss = module.training_step(batch, 0)
    loss.backward()
    return loss.item(), _grads(module.model)


def _fused_logps(model, input_ids, attention_mask, completion_mask) -> torch.Tensor:
    """Per-sequence summed completion log-probs from TRL's patched forward (its fused LM head), as _compute_loss does."""
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True, use_cache=False)
    return out.log_probs.sum(1)


def _trl_args(cls, tmp_path, **kw):
    return cls(output_dir=str(tmp_path / "trl"), bf16=False, use_cpu=True, report_to=[], save_strategy="no",
               per_device_train_batch_size=B, gradient_checkpointing=False, **kw)


# ---- DPO family against DPOTrainer ------------------------------------------------------------------------------
DPO_CASES = {
    # name: (our method fields, TRL DPOConfig fields)
    "sigmoid": (dict(loss_type="sigmoid"), dict(loss_type=["sigmoid"])),
    "ipo": (dict(loss_type="ipo"), dict(loss_type=["ipo"])),
    "robust": (dict(loss_type="robust", loss_params={"label_smoothing": 0.2}), dict(loss_type=["robust"], label_smoothing=0.2)),
    "hinge": (dict(loss_type="hinge", beta=1.0), dict(loss_type=["hinge"], beta=1.0)),
    "sigmoid_sft": (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.3]),
                    dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.3])),
}


@pytest.mark.parametrize("case", list(DPO_CASES))
def test_dpo_losses_and_step_match_trl(case, tmp_path, tokenizer):
    ours_spec, trl_spec = DPO_CASES[case]
    module = _module(tokenizer, **ours_spec)
    trainer = DPOTrainer(model=copy.deepcopy(module.model), ref_model=copy.deepcopy(module.reference._model),
                         args=_trl_args(DPOConfig, tmp_path, **{"beta": 0.5, **trl_spec}),
                         train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)
    trainer.model.train()
    batch = _batch(module)
    inputs = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(_pair_examples(batch))
    types, weights, params = module.loss_types, module.loss_weights, module.loss_params

    trainer.model.zero_grad()
    trl_loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    trl_loss.backward()
    trl_grads = _grads(trainer.model)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if v}

    # 1. our loss on TRL's forward: value and gradient
    trainer.model.zero_grad()
    args = (inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
    logps = _fused_logps(trainer.model, *args)
    with torch.no_grad():
        ref = _fused_logps(trainer.ref_model, *args)
    tokens = inputs["completion_mask"].sum(1)
    lp = PairLogps(*logps.chunk(2), *tokens.chunk(2), *ref.chunk(2))  # TRL's batch is [chosen; rejected]
    loss, _ = combined_loss(lp, types, weights, params)
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), abs=LOSS_TOL)
    _assert_same_grads(_grads(trainer.model), trl_grads, atol=1e-6, rtol=1e-5)
    beta = params["beta"]
    assert (beta * (lp.chosen - lp.ref_chosen)).mean().item() == pytest.approx(metrics["rewards/chosen"], abs=LOSS_TOL)
    assert (beta * (lp.rejected - lp.ref_rejected)).mean().item() == pytest.approx(metrics["rewards/rejected"], abs=LOSS_TOL)

    # 2. the module's whole step on its own copy
    step_loss, step_grads = _module_step(module, batch)
    assert step_loss == pytest.approx(trl_loss.item(), abs=STEP_TOL["atol"])
    _assert_same_grads(step_grads, trl_grads, **STEP_TOL)
    with torch.no_grad():
        ours, _ = module.pair_logps(batch)
    for mine, theirs in ((ours.chosen, lp.chosen), (ours.rejected, lp.rejected), (ours.ref_chosen, lp.ref_chosen),
                         (ours.ref_rejected, lp.ref_rejected)):
        assert torch.allclose(mine, theirs.detach(), **STEP_TOL)
    assert torch.equal(ours.chosen_tokens, lp.chosen_tokens) and torch.equal(ours.rejected_tokens, lp.rejected_tokens)

    # sanity: a wrong beta, or TRL's [chosen; rejected] halves read from our interleaved rows, would not match
    with torch.no_grad():
        wrong_beta, _ = combined_loss(lp, types, weights, {**params, "beta": beta * 1.1})
        sums, toks, _ = module._policy_logps(batch)
        refs = module._reference_logps(batch)
        halves = PairLogps(sums[:B], sums[B:], toks[:B], toks[B:], refs[:B], refs[B:])
        wrong_layout, _ = combined_loss(halves, types, weights, params)
    for wrong in (wrong_beta, wrong_layout):
        assert abs(wrong.item() - trl_loss.item()) > WRONG


# ---- SimPO against CPOTrainer(loss_type="simpo") ------------------------------------------------------------------
def test_simpo_loss_and_step_match_trl_cpo(tmp_path, tokenizer):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    beta, ratio = 2.0, 0.5
    module = _module(tokenizer, loss_type="simpo", beta=beta, loss_params={"gamma_beta_ratio": ratio}, log_kl=False)
    assert module.reference is None  # reference-free, and no KL logging asked for
    trainer = CPOTrainer(model=copy.deepcopy(module.model),
                         args=_trl_args(CPOConfig, tmp_path, loss_type="simpo", cpo_alpha=0.0, beta=beta,
                                        simpo_gamma=ratio * beta),
                         train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer)
    trainer.model.train()
    batch = _batch(module)
    inputs = {}
    for key in ("chosen", "rejected"):  # CPO's per-side layout: prompt + completion, right-padded, -100 labels
        collated = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(
            [{"prompt_ids": e["prompt_ids"], "chosen_ids": e[f"{key}_ids"], "rejected_ids": e[f"{key}_ids"]}
             for e in _pair_examples(batch)])
        inputs[f"{key}_input_ids"] = collated["input_ids"][:B]
        inputs[f"{key}_attention_mask"] = collated["attention_mask"][:B]
        inputs[f"{key}_labels"] = collated["input_ids"][:B].masked_fill(collated["completion_mask"][:B] == 0, -100)

    trainer.model.zero_grad()
    trl_loss, _ = trainer.get_batch_loss_metrics(trainer.model, inputs)
    trl_loss.backward()
    trl_grads = _grads(trainer.model)

    # 1. our loss on TRL's forward (CPO's concatenated batch and full logits), summed log-probs and token counts
    trainer.model.zero_grad()
    cat = trainer.concatenated_inputs(inputs, padding_value=tokenizer.pad_token_id)
    logits = trainer.model(cat["concatenated_input_ids"], attention_mask=cat["concatenated_attention_mask"],
                           use_cache=False).logits
    sums = trainer.get_batch_logps(logits, cat["concatenated_labels"], average_log_prob=False)
    tokens = (cat["concatenated_labels"][:, 1:] != -100).sum(1)
    lp = PairLogps(sums[:B], sums[B:], tokens[:B], tokens[B:])
    loss, _ = combined_loss(lp, ["simpo"], [1.0], module.loss_params)
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), abs=LOSS_TOL)
    _assert_same_grads(_grads(trainer.model), trl_grads, atol=1e-6, rtol=1e-5)

    # 2. the module's whole step
    step_loss, step_grads = _module_step(module, batch)
    assert step_loss == pytest.approx(trl_loss.item(), abs=STEP_TOL["atol"])
    _assert_same_grads(step_grads, trl_grads, **STEP_TOL)

    # sanity: gamma taken as the absolute margin (not beta * gamma_beta_ratio) would not match
    wrong, _ = combined_loss(lp, ["simpo"], [1.0], {"beta": beta, "gamma_beta_ratio": ratio / beta})
    assert abs(wrong.item() - trl_loss.item()) > WRONG


# ---- KTO against KTOTrainer ---------------------------------------------------------------------------------------
def test_kto_loss_and_step_match_trl(tmp_path, tokenizer):
    beta, w_d, w_u = 0.5, 1.0, 1.3
    module = _module(tokenizer, loss_type="kto", beta=beta, loss_params={"desirable_weight": w_d, "undesirable_weight": w_u})
    unpaired = [{"prompt": r["prompt"], "completion": r[key], "label": key == "chosen"} for r in ROWS for key in ("chosen", "rejected")]
    trainer = KTOTrainer(model=copy.deepcopy(module.model), ref_model=copy.deepcopy(module.reference._model),
                         args=_trl_args(KTOConfig, tmp_path, beta=beta, desirable_weight=w_d, undesirable_weight=w_u),
                         train_dataset=Dataset.from_list(unpaired), processing_class=tokenizer)
    trainer.model.train()
    batch = _batch(module)
    # our 2B unpaired rows in our order (x_i, y_w,i), (x_i, y_l,i), ...; row r's KL completion is row r-2's, as the
    # module pairs them (torch.roll by 2); TRL takes whatever KL completions it is given
    n = batch["completion_ids"].shape[0]
    completions = [_unpad(batch["completion_ids"][r], batch["completion_mask"][r]) for r in range(n)]
    examples = [{"prompt_ids": _unpad(batch["prompt_ids"][r], batch["prompt_mask"][r]), "completion_ids": completions[r],
                 "KL_completion_ids": completions[(r - 2) % n], "label": r % 2 == 0} for r in range(n)]
    inputs = DataCollatorForUnpairedPreference(pad_token_id=tokenizer.pad_token_id)(examples)

    trainer.model.zero_grad()
    trl_loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    trl_loss.backward()
    trl_grads = _grads(trainer.model)
    trl_kl = trainer._metrics["train"]["kl"][-1]
    assert trl_kl > 0.01  # the reference point z0 is active (not clamped to 0) in this case

    # 1. our loss on TRL's forward
    trainer.model.zero_grad()
    args = (inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
    kl_args = (inputs["KL_input_ids"], inputs["KL_attention_mask"], inputs["KL_completion_mask"])
    logps = _fused_logps(trainer.model, *args)
    with torch.no_grad():
        ref = _fused_logps(trainer.ref_model, *args)
        z0 = kto_kl_baseline(_fused_logps(trainer.model, *kl_args), _fused_logps(trainer.ref_model, *kl_args))
    loss = kto_loss(logps, ref, inputs["label"], z0, beta, w_d, w_u).mean()
    loss.backward()
    assert z0.item() == pytest.approx(trl_kl, abs=LOSS_TOL)
    assert loss.item() == pytest.approx(trl_loss.item(), abs=LOSS_TOL)
    _assert_same_grads(_grads(trainer.model), trl_grads, atol=1e-6, rtol=1e-5)

    # 2. the module's whole step (its own unpairing and mismatched completions)
    step_loss, step_grads = _module_step(module, batch)
    assert step_loss == pytest.approx(trl_loss.item(), abs=STEP_TOL["atol"])
    _assert_same_grads(step_grads, trl_grads, **STEP_TOL)

    # sanity: KTO without its reference point (z0 = 0) would not match
    with torch.no_grad():
        wrong = kto_loss(logps, ref, inputs["label"], torch.tensor(0.0), beta, w_d, w_u).mean()
    assert abs(wrong.item() - trl_loss.item()) > WRONG
