"""Bad input fails with one clear line naming the field and the fix, before any training starts.

The CLI cases go through the real entry point (``python -m workbench.train``). Each call spends nearly
all of its time importing torch/Lightning/transformers (workbench/train.py imports them before Hydra
even parses the command line), so all of them are launched by one module fixture, two at a time; each
test then checks its own case. "Before any training" is checked on disk: no run state, checkpoint,
tokenizer, summary or MLflow store appears.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch

from conftest import FAST, FAST_GRPO, cli_env, compose_cfg, python
from workbench.config import validate
from workbench.errors import ConfigError

TIMEOUT_S = 120
GSM8K_TRAIN = Path(__file__).resolve().parents[1] / "data" / "gsm8k" / "train.jsonl"
GSM8K_TEST = GSM8K_TRAIN.with_name("test.jsonl")


@dataclass
class Case:
    overrides: list[str]
    field: str | None  # None: Hydra's own composition error, not a ConfigError
    says: tuple[str, ...] = ()
    fast: bool = True  # prepend the FAST overrides (a model without them: only the trainer ones)


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    cwd: Path

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def _setup(root: Path) -> dict[str, Case]:
    empty = root / "empty_data"
    empty.mkdir()
    broken = root / "broken_data"
    broken.mkdir()
    good = GSM8K_TRAIN.read_text().splitlines()[:20]
    good[2] = good[2][: len(good[2]) // 2]  # line 3 cut in the middle of its JSON
    (broken / "train.jsonl").write_text("\n".join(good) + "\n")
    (broken / "test.jsonl").write_text("\n".join(GSM8K_TEST.read_text().splitlines()[:5]) + "\n")
    no_weights = root / "model_without_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    return {
        "unknown_method": Case(["method=nope"], None, ("Could not find 'method/nope'", "sft", "grpo")),
        "lr_zero": Case(["method.lr=0"], "method.lr", ("> 0", "got 0")),
        "lr_negative": Case(["method.lr=-1"], "method.lr", ("> 0", "got -1")),
        "group_size_one": Case(["method.group_size=1"], "method.group_size", (">= 2", "method.group_size=2")),
        "max_new_tokens_zero": Case(["method.max_new_tokens=0"], "method.max_new_tokens", ("> 0",)),
        "max_steps_zero": Case(["trainer.max_steps=0"], "trainer.max_steps", ("> 0",)),
        "missing_data": Case(["task=gsm8k", f"task.data_dir={empty}"], "task.data_dir",
                             ("does not exist", str(empty / "train.jsonl"))),
        "malformed_jsonl": Case(["task=gsm8k", f"task.data_dir={broken}"], "task.data_dir",
                                ("line 3", "malformed JSON", "train.jsonl")),
        "model_without_weights": Case(["model=hf_local", f"model.path={no_weights}"], "model.path",
                                      ("no weights", str(no_weights)), fast=False),
    }


def _command(case: Case) -> list[str]:
    fast = [o for o in FAST + FAST_GRPO if case.fast or not o.startswith("model.")]
    return [python(), "-m", "workbench.train", *fast, *case.overrides, "trainer.progress_bar=false"]


def _run(name: str, case: Case, root: Path) -> Result:
    cwd = root / "runs" / name
    cwd.mkdir(parents=True)
    started = time.perf_counter()
    proc = subprocess.run(_command(case), cwd=cwd, env=cli_env(cwd), capture_output=True, text=True, timeout=TIMEOUT_S)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started, cwd)


@pytest.fixture(scope="module")
def cli(tmp_path_factory) -> dict[str, tuple[Case, Result]]:
    root = tmp_path_factory.mktemp("bad_input")
    cases = _setup(root)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, name, case, root) for name, case in cases.items()}
        return {name: (cases[name], f.result()) for name, f in futures.items()}


def _assert_nothing_started(result: Result) -> None:
    """No run state, checkpoint, summary or MLflow record: the error came before the run began."""
    made = sorted(str(p.relative_to(result.cwd)) for p in result.cwd.rglob("*")
                  if p.name in ("checkpoints", "summary.json", "workbench_run.json", "tokenizer", "sft_base")
                  or p.suffix == ".ckpt")
    assert made == []
    assert not (result.cwd / "mlflow.db").exists(), "an MLflow run was created for input that was never valid"


CONFIG_ERROR_CASES = ["lr_zero", "lr_negative", "group_size_one", "max_new_tokens_zero", "max_steps_zero",
                      "missing_data", "malformed_jsonl", "model_without_weights"]


@pytest.mark.parametrize("name", CONFIG_ERROR_CASES)
def test_cli_bad_value_one_line(cli, name):
    case, result = cli[name]
    out = result.stdout + result.stderr
    assert result.rc == 2, f"exit {result.rc}\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    line = result.last_line
    assert line.startswith(f"workbench: error: {case.field}: "), result.stderr[-3000:]
    assert " -> " in line  # problem -> fix
    for text in case.says:
        assert text in line, line
    # the message is the only thing on stderr that mentions the field: one line, not a dump
    assert sum(case.field in ln for ln in result.stderr.splitlines()) == 1
    _assert_nothing_started(result)


def test_cli_unknown_group_option_lists_choices(cli):
    case, result = cli["unknown_method"]
    assert result.rc != 0
    assert "Traceback" not in result.stdout + result.stderr
    for text in case.says:
        assert text in result.stderr
    first = next(ln for ln in result.stderr.splitlines() if ln.strip())
    assert "method" in first and "nope" in first
    _assert_nothing_started(result)
    assert not (result.cwd / "outputs").exists()  # Hydra stopped before making a run directory


# ---- the checks that the CLI cases exercise, called directly (fast) ---------------------------------------
@pytest.mark.parametrize("overrides, field", [
    (["method.lr=0"], "method.lr"),
    (["method.lr=nan"], "method.lr"),
    (["method.lr=true"], "method.lr"),
    (["method.lr=abc"], "method.lr"),
    (["method.top_p=0"], "method.top_p"),
    (["method.top_p=abc"], "method.top_p"),
    (["method.scheduler=cosin"], "method.scheduler"),
    (["+method.base.scheduler=linear"], "method.base.scheduler"),
    (["method.base.lr=0"], "method.base.lr"),
    (["method.base.batch_size=1000"], "method.base.batch_size"),
    (["method.advantage=nope"], "method.advantage"),
    (["method.kl_estimator=k2"], "method.kl_estimator"),
    (["method.loss_agg=sum"], "method.loss_agg"),
    (["method.rewards=[]"], "method.rewards"),
    (["method.rewards=[correctness]"], "method.rewards[0]"),
    (["method.rewards=[{name: correctness, weight: heavy}]"], "method.rewards[0].weight"),
    (["method.minibatch_size=0"], "method.minibatch_size"),
    (["method.clip_eps_low=-0.1"], "method.clip_eps_low"),
    (["task.train_size=3"], "method.batch_size"),  # a batch bigger than the train split: zero steps
    (["trainer=ddp_cpu", "method.batch_size=5"], "method.batch_size"),  # the global batch must split over 2 ranks
    (["trainer.val_check_interval=0"], "trainer.val_check_interval"),
    (["method.temperature=0"], "method.temperature"),
    (["method.beta=-1"], "method.beta"),
    (["method.inner_iterations=0"], "method.inner_iterations"),
    (["trainer=ddp_cpu", "method.inner_iterations=2"], "method.inner_iterations"),
    (["method.policy_loss=ppo2"], "method.policy_loss"),
    (["method.importance_level=seq"], "method.importance_level"),
    (["method.reward_aggregation=mean"], "method.reward_aggregation"),
    (["method.generation.backend=tpu"], "method.generation.backend"),
    (["method.policy_loss=disco", "method.minibatch_size=3"], "method.minibatch_size"),
    (["method.kl_in_reward=true", "method.beta=0"], "method.kl_in_reward"),
    (["method.dynamic_sampling.max_rounds=-1"], "method.dynamic_sampling.max_rounds"),
    (["method.eval.pass_k=[9]"], "method.eval.pass_k"),
    (["method.eval.pass_k=[1]", "method.eval.num_samples=0"], "method.eval.num_samples"),
    (["method=brpo", "method.budgets=[3,2]"], "method.budgets"),
])
def test_validate_names_the_field(tmp_path, overrides, field):
    cfg = compose_cfg([*FAST, *FAST_GRPO, *overrides], tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    assert info.value.field == field
    assert message.startswith(f"{field}: ") and " -> " in message and "\n" not in message


@pytest.mark.parametrize("overrides, field", [
    (["method=dpo", "task=arithmetic"], "task"),  # no pairs to train on
    (["method.loss_type=sigmoidd"], "method.loss_type"),
    (["method.loss_type=[kto,sft]"], "method.loss_type"),
    (["method.loss_type=[sigmoid,sft]", "method.loss_weights=[1.0]"], "method.loss_weights"),
    (["method.beta=0"], "method.beta"),
    (["+method.loss_params.label_smoothing=0.5"], "method.loss_params.label_smoothing"),
    (["method=rdpo", "task.flip_rate=0.6"], "task.flip_rate"),
    (["method.reference=cached"], "method.reference"),
    (["method.max_prompt_length=0"], "method.max_prompt_length"),
])
def test_preference_validate_names_the_field(tmp_path, overrides, field):
    method = [o for o in overrides if o.startswith("method=")] or ["method=dpo"]
    rest = [o for o in overrides if not o.startswith("method=")]
    cfg = compose_cfg([*method, "task=synthetic_preference", *FAST, *rest], tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
        from workbench.tasks import build_task

        build_task(cfg.task)
    assert info.value.field == field and "\n" not in str(info.value)


@pytest.mark.parametrize("method, extra", [
    ("sft", []), ("grpo", []), ("grpo", ["method.beta=0", "method.top_p=1", "method.minibatch_size=4"]),
    ("sft", ["method.scheduler=constant", "task.train_size=4"]),
    ("dapo", []), ("disco", ["method.minibatch_size=4"]), ("rloo", []), ("grpo", ["method.eval.pass_k=[1,4]"]),
])
def test_validate_accepts_good_configs(tmp_path, method, extra):
    cfg = compose_cfg([f"method={method}", *FAST, *(FAST_GRPO if method != "sft" else []), *extra], tmp_path / "run")
    assert validate(cfg) is None  # no false alarms: validate raises ConfigError on anything it rejects


# ---- NaN loss: stop, mark the run FAILED, keep what was good -----------------------------------------------
def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(fast_cfg, tmp_path, monkeypatch):
    import workbench.methods.sft as sft
    from workbench.train import run

    real = sft.sft_loss
    calls = {"n": 0}

    def flaky_loss(logprobs, mask, tokens=None):
        calls["n"] += 1
        loss = real(logprobs, mask, tokens)
        return loss * float("nan") if calls["n"] >= 4 else loss  # NaN from the 4th step on, graph kept

    monkeypatch.setattr(sft, "sft_loss", flaky_loss)
    cfg = fast_cfg("sft", ["trainer.max_steps=6"])
    with pytest.raises(SystemExit) as info:
        run(cfg)
    message = str(info.value.code)
    assert "loss" in message and "nan" in message and "step 3" in message, message
    assert "\n" not in message
    assert calls["n"] == 4  # stopped at the first NaN, no further step

    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.logger.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    mlrun = runs[0]
    assert mlrun.info.status == "FAILED"

    history = client.get_metric_history(mlrun.info.run_id, "train/loss")
    steps = sorted(m.step for m in history)
    assert steps and all(math.isfinite(m.value) for m in history)
    assert {0, 1}.issubset(steps) and max(steps) <= 2  # the steps before the NaN, none after
    assert client.get_metric_history(mlrun.info.run_id, "val/accuracy"), "the step-2 validation was logged"
    assert "test_before/accuracy" in mlrun.data.metrics

    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in checkpoints] == ["step2.ckpt"]
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    weights = state["state_dict"]
    assert weights and all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    assert not (tmp_path / "run" / "summary.json").exists()
