"""Learned reward: a local sequence-classification model, or any python callable."""

from __future__ import annotations

import importlib
from pathlib import Path

from workbench.rewards.base import RewardParamError, check_int, register_reward


def import_callable(target: str):
    """'package.module:function' -> the function (attribute paths like 'mod:Class.method' work too)."""
    if not isinstance(target, str) or target.count(":") != 1:
        raise RewardParamError("target", f"must look like 'package.module:function', got {target!r}",
                               "e.g. target: mypkg.rewards:score")
    module_name, attr = target.split(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise RewardParamError("target", f"cannot import '{target}' ({e})", "check the module path and name") from None
    if not callable(obj):
        raise RewardParamError("target", f"'{target}' is not callable", "point it at a function")
    return obj


class SequenceClassifierReward:
    """Scores ``prompt + completion`` with a local ``AutoModelForSequenceClassification``.

    r = logits[label_index] of the text (label_index=-1: the single logit of a 1-label reward head,
    the "positive" logit of a 2-label classifier). Batched, under no_grad, in eval mode; weights are
    read from disk only (``local_files_only``) and never with ``trust_remote_code``.
    """

    def __init__(self, path: str, batch_size: int = 8, max_length: int = 1024, label_index: int = -1,
                 device: str = "cpu"):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not Path(path).is_dir():
            raise RewardParamError("path", f"'{path}' is not a local model folder",
                                   "save the model with save_pretrained() and point path at that folder")
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.max_length = check_int("max_length", max_length, low=1)
        if isinstance(label_index, bool) or not isinstance(label_index, int):
            raise RewardParamError("label_index", f"must be an integer, got {label_index!r}", "e.g. label_index: -1")
        self.label_index = label_index
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise RewardParamError("path", f"cannot load a sequence-classification model from '{path}' ({e})",
                                   "point path at a folder saved by a *ForSequenceClassification model") from None
        num_labels = self.model.config.num_labels
        if not -num_labels <= label_index < num_labels:
            raise RewardParamError("label_index", f"out of range for a model with {num_labels} label(s)",
                                   f"use -1 or 0..{num_labels - 1}")
        if self.tokenizer.pad_token is None:  # decoder-only reward models often ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = torch.device(device)
        self.model.to(self.device).eval()

    def __call__(self, prompts, completions, **_fields) -> list[float]:
        import torch

        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                       truncation=True, max_length=self.max_length).to(self.device)
                logits = self.model(**batch).logits.float()
                scores.extend(logits[:, self.label_index].tolist())
        return scores


@register_reward("reward_model")
def reward_model(task, path: str | None = None, target: str | None = None, batch_size: int = 8,
                 max_length: int = 1024, label_index: int = -1, device: str = "cpu", train=None):
    """A learned reward (e.g. the multi-output safety RM of METHODS.md B10 as one head per entry).

    Exactly one of
      path:   a local HF sequence-classification folder, scored on prompt+completion (see
              ``SequenceClassifierReward``; batch_size, max_length, label_index, device apply);
      target: 'package.module:function', called as ``fn(prompts, completions, **task_fields)`` and
              returning one float per completion (the reward interface of this package).

    ``train: {...}`` (overrides of conf/method/reward_model.yaml) instead of ``path``: the run trains a Bradley-Terry
    reward model on its own task's pairs first (cached; ``workbench.runner.reward_model_stages``) and fills in path.
    """
    if train is not None and path is None and target is None:
        raise RewardParamError("train", "names a reward model to train, which a run (python -m workbench.train) does "
                               "before the method starts; it was not trained here", "run it through workbench.train, or give path: <folder>")
    if (path is None) == (target is None):
        raise RewardParamError("path", "give exactly one of path (a local model) or target (a python callable)",
                               "set path: /models/rm or target: mypkg.rewards:score")
    if target is not None:
        return import_callable(target)
    return SequenceClassifierReward(str(path), batch_size=batch_size, max_length=max_length,
                                    label_index=label_index, device=device)
