"""Config checks that run before anything heavy loads, and helpers on the composed config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from workbench import ROOT
from workbench.errors import ConfigError

OmegaConf.register_new_resolver("workbench_root", lambda: str(ROOT), replace=True)

SFT_CONFIG = ROOT / "conf" / "method" / "sft.yaml"


def _positive(cfg: DictConfig, key: str, hint: str, allow_zero: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    if not isinstance(value, (int, float)) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}", hint)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first nonsense value and its fix."""
    m = cfg.method
    _positive(cfg, "method.lr", "use a small positive learning rate, e.g. method.lr=1e-4")
    _positive(cfg, "method.batch_size", "set method.batch_size to a positive count")
    _positive(cfg, "method.max_new_tokens", "set method.max_new_tokens to a positive count")
    _positive(cfg, "method.eval.max_new_tokens", "set method.eval.max_new_tokens to a positive count")
    _positive(cfg, "method.eval.batch_size", "set method.eval.batch_size to a positive count")
    _positive(cfg, "method.inner_iterations", "set method.inner_iterations >= 1")
    _positive(cfg, "method.temperature", "sample with method.temperature > 0 (greedy is for evaluation)")
    _positive(cfg, "method.beta", "set method.beta >= 0", allow_zero=True)
    _positive(cfg, "method.weight_decay", "set method.weight_decay >= 0", allow_zero=True)
    _positive(cfg, "method.warmup_steps", "set method.warmup_steps >= 0", allow_zero=True)
    _positive(cfg, "trainer.max_steps", "set trainer.max_steps to a positive number of optimizer steps")
    _positive(cfg, "trainer.val_check_interval", "set trainer.val_check_interval to a positive number of steps")
    if "group_size" in m and (not isinstance(m.group_size, int) or m.group_size < 2):
        raise ConfigError("method.group_size", f"must be >= 2 (a group needs a baseline), got {m.group_size!r}", "set method.group_size=2 or more")
    top_p = OmegaConf.select(cfg, "method.top_p")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError("method.top_p", f"must be in (0, 1], got {top_p}", "set method.top_p=1.0 to disable nucleus sampling")
    if m.get("init", "scratch") not in ("scratch", "sft"):
        raise ConfigError("method.init", f"unknown '{m.init}'", "use scratch or sft")
    if cfg.model.source not in ("tiny", "local", "gguf"):
        raise ConfigError("model.source", f"unknown '{cfg.model.source}'", "use tiny, local or gguf")
    if cfg.model.source == "local":
        from workbench.policy.models import check_local_model

        check_local_model(cfg.model.path)
    if int(cfg.trainer.devices) > 1 and m.get("family") == "group_rl" and int(m.get("inner_iterations", 1)) > 1:
        raise ConfigError("method.inner_iterations", "several updates per rollout are not supported under DDP yet", "use method.inner_iterations=1 with trainer=ddp_cpu")


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def base_config(cfg: DictConfig) -> DictConfig:
    """The config of the SFT warm start a method asks for: conf/method/sft.yaml + method.base overrides."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    sft = OmegaConf.merge(OmegaConf.load(SFT_CONFIG), cfg.method.get("base") or {})
    sft.init = "scratch"
    raw["method"] = OmegaConf.to_container(sft, resolve=False)
    raw["resume"] = None
    raw["run_name"] = f"sft_base-{cfg.task.name}-{cfg.model.name}-s{cfg.seed}"
    base = OmegaConf.create(raw)
    # the warm start is bounded by method.base.*, never by the trainer overrides of the method on top
    base.trainer.max_steps = "${method.max_steps}"
    base.trainer.val_check_interval = "${method.val_check_interval}"
    base.trainer.devices = 1  # the warm start runs in the launching process, before any DDP workers start
    base.trainer.strategy = "auto"
    base.trainer.num_nodes = 1
    if base.model.get("lora"):
        base.model.lora.r = 0  # the base is a full fine-tune; adapters belong to the method on top
    return base


def cache_key(base: DictConfig) -> str:
    """Hash of what determines the SFT base's weights (not where it is logged or how many threads ran it)."""
    resolved = OmegaConf.to_container(base, resolve=True)
    keyed = {
        "model": resolved["model"],
        "task": resolved["task"],
        "method": resolved["method"],
        "seed": resolved["seed"],
        "precision": resolved["trainer"]["precision"],
        "max_steps": resolved["trainer"]["max_steps"],
    }
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def repo_relative(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
