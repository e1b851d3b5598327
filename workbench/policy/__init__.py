"""The policy layer every family shares: models, the sampler, per-token log-probs, the reference."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from workbench.policy.logprobs import Reference, token_logprobs
from workbench.policy.models import Policy, apply_lora, build_tiny, gguf_to_local, load_local
from workbench.policy.sampler import Rollout, sample

log = logging.getLogger(__name__)


def build_policy(model_cfg: DictConfig, cache_dir: str | Path, corpus=None, tokenizer_dir: Path | None = None,
                 weights_dir: Path | None = None) -> Policy:
    """Build the policy a config asks for; ``weights_dir`` (an SFT base) replaces the config's weights."""
    if weights_dir is not None:
        policy = load_local(weights_dir, model_cfg, field="method.init")
    elif model_cfg.source == "tiny":
        tokenizer = None
        if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
            tokenizer.padding_side = "left"
        policy = build_tiny(model_cfg, corpus, tokenizer=tokenizer)
    elif model_cfg.source == "local":
        policy = load_local(model_cfg.path, model_cfg)
    else:
        policy = load_local(gguf_to_local(model_cfg, cache_dir), model_cfg, field="model.gguf_file")
    if model_cfg.get("lora") and model_cfg.lora.r > 0:
        policy = apply_lora(policy, model_cfg.lora)
    return policy


__all__ = ["Policy", "Reference", "Rollout", "build_policy", "sample", "token_logprobs"]
