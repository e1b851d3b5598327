"""Every option of every config group composes, validates and instantiates."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from workbench.methods.self_correction.protocol import for_method
from conftest import CONF_DIR, FAST, FAST_CONTROL, compose_cfg, default_control_task, method_family
from workbench.config import validate
from workbench.methods import method_class
from workbench.policy import build_policy
from workbench.tasks import build_task

GROUPS = {g: sorted(p.stem for p in (Path(CONF_DIR) / g).glob("*.yaml")) for g in ("method", "model", "task", "trainer", "logger")}
CASES = [(g, o) for g, opts in GROUPS.items() for o in opts]


def test_every_group_has_options():
    assert set(GROUPS["method"]) >= {"sft", "grpo"}
    assert set(GROUPS["model"]) >= {"tiny_llama", "tiny_qwen2", "smollm2_135m", "hf_local"}
    assert set(GROUPS["trainer"]) >= {"cpu", "gpu", "ddp_cpu"}
    assert set(GROUPS["task"]) >= {"arithmetic", "gsm8k"}


@pytest.fixture(scope="module")
def local_model_dir(tmp_path_factory):
    cfg = compose_cfg(["model=tiny_llama", *FAST], tmp_path_factory.mktemp("o"))
    task = build_task(cfg.task)
    policy = build_policy(cfg.model, cfg.paths.cache_dir, corpus=task.corpus())
    path = tmp_path_factory.mktemp("hf_local")
    policy.save(path)
    return path


@pytest.mark.parametrize("group,option", CASES)
def test_config_composes_and_instantiates(group, option, tmp_path, local_model_dir):
    from workbench.runner import build_trainer, make_logger

    overrides = [f"{group}={option}", *FAST]
    control_method = group == "method" and method_family(option) == "offline_rl"
    control_task = group == "task" and "control" in OmegaConf.load(Path(CONF_DIR) / "task" / f"{option}.yaml")
    if control_method or control_task:
        _control_case(group, option, tmp_path)
        return
    if group == "task" and option == "gsm8k":
        overrides = [o for o in overrides if not o.startswith("task.")] + ["task.train_size=64", "task.test_size=8"]
    if group == "model" and option not in ("tiny_llama", "tiny_qwen2"):  # the sizes in FAST are tiny-only
        overrides = [o for o in overrides if not o.startswith("model.")] + ([f"model.path={local_model_dir}"] if option == "hf_local" else [])
    if group == "method" and method_family(option) == "preference":
        overrides.append("task=synthetic_preference")  # preference methods train on pairs
    if group == "task" and "workbench.tasks.envs." in OmegaConf.load(Path(CONF_DIR) / "task" / f"{option}.yaml")._target_:
        overrides.append("method=gigpo")  # a multi-turn environment needs a multi-turn method
    if group == "method" and method_family(option) == "multi_turn":
        overrides.append("task=gridworld")
    cfg = compose_cfg(overrides, tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}")
    OmegaConf.resolve(cfg)
    validate(cfg)
    task = for_method(build_task(cfg.task), cfg.method)  # what workbench.runner hands the method
    assert len(task.split("train")) > 0 and len(task.split("test")) > 0
    module_cls = method_class(cfg.method.module)
    if group == "trainer" and option == "gpu":
        assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
        if not torch.cuda.is_available():
            return  # a GPU Trainer cannot be built on this machine; the config itself is checked above
    if group == "model" and option == "smollm2_135m":
        assert cfg.model.source == "gguf" and cfg.model.use_chat_template  # loading: tests/test_policy.py
        return
    policy = build_policy(cfg.model, cfg.paths.cache_dir, corpus=task.corpus())
    module = module_cls(policy, task, cfg.method, cfg.trainer)
    assert module.family == cfg.method.family
    trainer = build_trainer(cfg, make_logger(cfg), tmp_path / "run", module.automatic_optimization)
    assert trainer.max_steps == cfg.trainer.max_steps
    if group == "trainer" and option == "ddp_cpu":
        assert trainer.num_devices == 2


def _control_case(group: str, option: str, tmp_path) -> None:
    """A control method on its default task, or a control task under a method that handles its actions."""
    from workbench.runner import build_trainer, make_logger

    if group == "method":
        overrides = [f"method={option}", f"task={default_control_task(option)}"]
    else:
        space = OmegaConf.load(Path(CONF_DIR) / "task" / f"{option}.yaml").action_space
        dataset = OmegaConf.load(Path(CONF_DIR) / "task" / f"{option}.yaml").get("dataset") or {}
        method = "sac" if not dataset else ("td3_bc" if space == "continuous" else "bc")
        overrides = [f"method={method}", f"task={option}"]
        if dataset.get("kind"):
            pytest.skip("generated datasets are built (SAC training) by tests/test_control_generate.py")
    cfg = compose_cfg([*overrides, *FAST_CONTROL], tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}")
    OmegaConf.resolve(cfg)
    validate(cfg)
    task = build_task(cfg.task)
    module = method_class(cfg.method.module)(task, cfg.method, cfg.trainer)
    assert module.family == cfg.method.family == "offline_rl"
    trainer = build_trainer(cfg, make_logger(cfg), tmp_path / "run", module.automatic_optimization)
    assert trainer.max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("option", sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")))
def test_experiment_bundles_compose_and_validate(option, tmp_path):
    cfg = compose_cfg([f"experiment={option}"], tmp_path / "run")
    OmegaConf.resolve(cfg)
    validate(cfg)
    assert method_class(cfg.method.module).family == cfg.method.family
