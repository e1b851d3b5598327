"""Shared fixtures: configs composed exactly as the CLI composes them, at a size that runs in seconds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from workbench import ROOT

CONF_DIR = str(ROOT / "conf")

# Tiny everything: a 2-layer 32-wide model, a few hundred problems, a few steps.
FAST = [
    "model.hidden_size=32",
    "model.intermediate_size=64",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.num_kv_heads=1",
    "task.train_size=256",
    "task.val_size=8",
    "task.test_size=8",
    "trainer.max_steps=4",
    "method.val_check_interval=2",
    "method.batch_size=4",
    "trainer.progress_bar=false",
    "trainer.num_threads=1",
]
FAST_BASE = ["method.base.max_steps=3", "method.base.val_check_interval=3", "method.base.batch_size=8"]
FAST_GRPO = ["method.group_size=2", *FAST_BASE]
FAST_PREFERENCE = ["task=synthetic_preference", *FAST_BASE]
# Multi-turn methods: 2 instances x 2 episodes per step; tasks default to the method's (gridworld unless given).
FAST_MULTI_TURN = ["method.group_size=2", "method.batch_size=2", "method.eval.batch_size=8", *FAST_BASE]
# Self-correction methods: 2 two-attempt samples per problem; stage I of SCoRe ends after step 2 of 4.
FAST_SELF_CORRECTION = ["method.group_size=2", "method.eval.batch_size=8", *FAST_BASE]
# Control methods (offline / hybrid RL on gymnasium tasks): small MLPs, a few updates, two evaluation episodes.
FAST_CONTROL = [
    "method.hidden=[32,32]",
    "method.batch_size=32",
    "trainer.max_steps=6",
    "method.val_check_interval=3",
    "method.log_every=2",
    "task.eval_episodes=2",
    "trainer.progress_bar=false",
    "trainer.num_threads=1",
]


def compose_cfg(overrides: list[str], output_dir: Path, tracking_uri: str | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        if tracking_uri:
            cfg.logger.tracking_uri = tracking_uri
    return cfg


def load_bench(script: str):
    """bench/<script>.py as a module. bench/ goes on sys.path (and stays: a script may import its neighbour jobs.py
    lazily) because the scripts import jobs.py as a sibling."""
    import importlib.util
    import sys

    from workbench import ROOT

    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{script}", ROOT / "bench" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def method_family(method: str) -> str:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[f"method={method}"]).method.family


def default_control_task(method: str) -> str:
    """The task a control method is exercised on: Pendulum offline data, or Pendulum online for online-only methods."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        m = compose(config_name="train", overrides=[f"method={method}"]).method
    online = m.get("online") or {}
    return "pendulum" if online.get("enabled") and not online.get("start_step") else "pendulum_expert"


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Each test gets its own MLflow store and working directory; the SFT cache is per session."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    cache = tmp_path_factory.mktemp("workbench-cache")
    os.environ["WORKBENCH_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return cache


@pytest.fixture
def fast_cfg(tmp_path):
    """fast_cfg(method='sft', extra=[...]) -> a composed config writing under tmp_path."""

    def make(method: str = "sft", extra: list[str] | None = None, run_dir: str = "run") -> DictConfig:
        family = method_family(method)
        if family == "offline_rl":
            task = [] if any(o.startswith("task=") for o in extra or []) else [f"task={default_control_task(method)}"]
            overrides = [f"method={method}", *task, *FAST_CONTROL, *(extra or [])]
            return compose_cfg(overrides, tmp_path / run_dir, f"sqlite:///{tmp_path / 'mlflow.db'}")
        by_family = {"group_rl": FAST_GRPO, "preference": FAST_PREFERENCE, "multi_turn": FAST_MULTI_TURN,
                      "self_correction": FAST_SELF_CORRECTION}.get(family, [])
        overrides = [f"method={method}", *FAST, *by_family, *(extra or [])]
        return compose_cfg(overrides, tmp_path / run_dir, f"sqlite:///{tmp_path / 'mlflow.db'}")

    return make


def python() -> str:
    return sys.executable


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env
