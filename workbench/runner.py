"""One run, start to end: check the config, build task and policy (training the cached SFT base first
when the method starts from one), fit the method's LightningModule, evaluate held-out greedy accuracy
before and after, and record everything in one MLflow run. ``workbench.train`` is the CLI over this.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf

from workbench.config import base_config, cache_key, flatten, has_weights, reward_model_config, validate
from workbench.errors import ConfigError, NonFiniteLossError
from workbench.methods import method_class
from workbench.methods.self_correction.protocol import for_method
from workbench.policy import Policy, build_policy
from workbench.summary import print_summary
from workbench.stores import ensure_experiment, partial_dir, publish_once
from workbench.tasks import Task, build_task
from workbench.tracking import PendingMetricsInCheckpoint, RunLogger, git_commit

log = logging.getLogger("workbench")
RUN_STATE = "workbench_run.json"


def is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


# ---- run directory state: what resume needs ---------------------------------------------------------
def save_run_state(run_dir: Path, cfg: DictConfig, logger: RunLogger) -> None:
    if not is_rank_zero():
        return
    state = {
        "mlflow_run_id": logger.run_id,
        "tracking_uri": cfg.logger.tracking_uri,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (RUN_STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(run_dir / RUN_STATE)


def load_run_state(run_dir: Path) -> dict:
    path = run_dir / RUN_STATE
    if not path.is_file():
        raise ConfigError("resume", f"'{run_dir}' has no {RUN_STATE}", "pass the Hydra run directory that the interrupted run printed")
    return json.loads(path.read_text())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest checkpoint that loads; a file cut short by a kill mid-write is skipped."""
    candidates = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            return path
        except Exception as e:  # noqa: BLE001 - any unreadable file is skipped the same way
            log.warning("skipping unreadable checkpoint %s (%s)", path, e)
    return None


# ---- tracking -------------------------------------------------------------------------------------------
def sweep_tags() -> dict[str, str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {}
    return {"sweep": hc.sweep.dir, "sweep.job": str(hc.job.num), "sweep.overrides": " ".join(hc.overrides.task)}


def trial_tags(cfg: DictConfig) -> dict[str, str]:
    """A sweep trial's seed run: tagged with its study and trial, and nested under the trial's own MLflow run."""
    spec = cfg.get("optuna")
    if not spec:
        return {}
    tags = {"optuna.study": str(spec.study), "optuna.trial": str(spec.trial)}
    if spec.get("parent_run"):
        tags["mlflow.parentRunId"] = str(spec.parent_run)
    return tags


def make_logger(cfg: DictConfig, run_id: str | None = None, extra_tags: dict | None = None) -> RunLogger:
    commit, dirty = git_commit()
    tags = {
        "workbench.method": cfg.method.name,
        "workbench.family": cfg.method.family,
        "workbench.task": cfg.task.name,
        "workbench.model": "mlp" if is_control(cfg) else cfg.model.name,
        "workbench.seed": str(cfg.seed),
        "git.commit": commit,
        "git.dirty": str(dirty),
        **{k: str(v) for k, v in (cfg.logger.get("tags") or {}).items()},
        **trial_tags(cfg),
        **(extra_tags or {}),
    }
    if is_rank_zero():  # parallel jobs on a fresh tracking database would race to create its tables
        ensure_experiment(cfg.logger.tracking_uri, cfg.logger.experiment_name)
    return RunLogger(
        experiment_name=cfg.logger.experiment_name,
        run_name=cfg.run_name,
        tracking_uri=cfg.logger.tracking_uri,
        tags=tags,
        run_id=run_id,
    )


def record_config(logger: RunLogger, cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if is_control(cfg):
        resolved.pop("model", None)  # the language-model group plays no part in a control run
    logger.log_hyperparams(flatten(resolved))
    logger.log_text(OmegaConf.to_yaml(resolved), "config.yaml")


# ---- stages -------------------------------------------------------------------------------------------
class StepProgressBar(RichProgressBar):
    """Rich bars that count optimizer steps (runs are bounded by max_steps, not epochs)."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{self.trainer.lightning_module.cfg.name} (max {self.trainer.max_steps} steps)"


def build_trainer(cfg: DictConfig, logger: RunLogger, run_dir: Path, automatic_optimization: bool = True) -> L.Trainer:
    t = cfg.trainer
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step}",
        auto_insert_metric_name=False,
        monitor=None,
        save_top_k=1,  # keep the newest; the previous one is deleted only after the new one is written
        save_on_train_epoch_end=False,  # i.e. right after each validation
    )
    callbacks = [checkpoints, PendingMetricsInCheckpoint(logger)]
    if cfg.get("optuna"):  # a trial of an Optuna sweep: report validation metrics, stop when pruned
        from workbench.sweep.trial import OptunaPruning

        callbacks.append(OptunaPruning(cfg.optuna))
    if t.progress_bar:
        callbacks.append(StepProgressBar(leave=True))
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=-1,
        val_check_interval=min(t.val_check_interval, t.max_steps),
        check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps,
        num_sanity_val_steps=0,
        gradient_clip_val=cfg.method.max_grad_norm if automatic_optimization else None,  # manual steps clip themselves
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=bool(t.progress_bar),
        enable_model_summary=False,
        default_root_dir=run_dir,
    )


def is_control(cfg: DictConfig) -> bool:
    """Control methods (offline / hybrid RL on gymnasium tasks) train their own MLPs: no language model."""
    return cfg.method.family == "offline_rl"


def fit_stage(cfg: DictConfig, task: Task, policy: Policy | None, logger: RunLogger, run_dir: Path,
              resume_from: Path | None = None, evaluate_before: bool = True) -> dict[str, float]:
    if policy is None:  # a control method: the task holds the environment and the dataset
        module = method_class(cfg.method.module)(task, cfg.method, cfg.trainer)
        module.run_seed = int(cfg.seed)
    else:
        module = method_class(cfg.method.module)(policy, task, cfg.method, cfg.trainer)
    trainer = build_trainer(cfg, logger, run_dir, module.automatic_optimization)
    results: dict[str, float] = {}
    if evaluate_before:
        module.eval_prefix = "test_before"
        results.update(trainer.test(module, verbose=False)[0])
        logger.flush()
    module.eval_prefix = "test"
    trainer.fit(module, ckpt_path=resume_from, weights_only=True)
    results.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    results.update(trainer.test(module, verbose=False)[0])
    results["steps"] = trainer.global_step
    pruned_at = next((c.pruned_at for c in trainer.callbacks if getattr(c, "pruned_at", None) is not None), None)
    if pruned_at is not None:
        from workbench.sweep.trial import PRUNED_METRIC

        results[PRUNED_METRIC] = pruned_at
        logger.set_tags({"optuna.pruned_at_step": str(pruned_at)})
    return results


def save_once(policy: Policy, path: Path) -> None:
    """Write a cached model folder atomically: a private temporary folder, then one rename."""
    tmp = partial_dir(path)
    policy.save(tmp)
    publish_once(tmp, path)


def sft_base(cfg: DictConfig, task: Task, parent: RunLogger, run_dir: Path) -> Path:
    """The cached SFT warm start for this model and task, trained now (as a child MLflow run) if missing."""
    base = base_config(cfg)
    path = Path(cfg.paths.cache_dir) / "sft" / f"{cfg.task.name}-{cfg.model.name}-{cache_key(base)}"
    if has_weights(path):
        log.info("SFT base: reusing %s", path)
        parent.set_tags({"workbench.sft_base_path": str(path)})
        return path
    if not is_rank_zero():
        raise RuntimeError(f"SFT base {path} missing in a worker process; rank 0 trains it before launching workers")
    log.info("SFT base: training %s (cached for later runs)", path)
    logger = make_logger(base, extra_tags={"workbench.stage": "sft_base", "mlflow.parentRunId": parent.run_id or ""})
    record_config(logger, base)
    policy = build_policy(base.model, base.paths.cache_dir, corpus=task.corpus())
    stage_dir = run_dir / "sft_base"
    try:
        fit_stage(base, task, policy, logger, stage_dir)
    except BaseException:
        logger.close("FAILED")
        raise
    save_once(policy, path)
    logger.set_tags({"workbench.sft_base_path": str(path)})
    logger.close("FINISHED")
    parent.set_tags({"workbench.sft_base_run_id": logger.run_id, "workbench.sft_base_path": str(path)})
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)  # the cached folder is what later runs use
    return path


def reward_model_stages(cfg: DictConfig, task: Task, parent: RunLogger, run_dir: Path) -> None:
    """Reward entries ``{name: reward_model, train: {...}}`` (``train``: overrides of conf/method/reward_model.yaml):
    the Bradley-Terry reward model of this run's task, model and seed, cached like the SFT base under
    <cache_dir>/reward_model/ (trained now as a child MLflow run if missing, from the run's seed, so it is the same
    model whether trained here or found); the entry then reads ``path: <that folder>``. The RM learns from the
    task's training pairs, so a GRPO run on an RM of its own prompts is one command."""
    from omegaconf import open_dict

    for i, spec in enumerate(cfg.method.get("rewards") or []):
        if spec.get("name") != "reward_model" or spec.get("train") is None:
            continue
        if spec.get("path") is not None or spec.get("target") is not None:
            raise ConfigError(f"method.rewards[{i}].train", "given together with path / target",
                              "give train (the run trains the reward model first) or path (a trained one), not both")
        rm = reward_model_config(cfg, OmegaConf.to_container(spec.train, resolve=True))  # interpolations: the run's
        rm.method.save_dir = None  # where it is saved is not what its weights depend on
        validate(rm)
        path = Path(cfg.paths.cache_dir) / "reward_model" / f"{cfg.task.name}-{cfg.model.name}-{cache_key(rm)}"
        if has_weights(path):
            log.info("reward model: reusing %s", path)
        else:
            _train_reward_model(rm, task, parent, run_dir / f"reward_model_{i}", path)
        with open_dict(cfg):
            spec.path = str(path)
            spec.pop("train")
        parent.set_tags({f"workbench.reward_model_path.{i}": str(path)})


def _train_reward_model(rm: DictConfig, task: Task, parent: RunLogger, stage_dir: Path, path: Path) -> None:
    if not is_rank_zero():
        raise RuntimeError(f"reward model {path} missing in a worker process; rank 0 trains it before launching workers")
    log.info("reward model: training %s (cached for later runs)", path)
    tmp = partial_dir(path)
    rm.method.save_dir = str(tmp)  # RewardModelModule saves itself there when fit ends
    logger = make_logger(rm, extra_tags={"workbench.stage": "reward_model", "mlflow.parentRunId": parent.run_id or ""})
    record_config(logger, rm)
    try:
        L.seed_everything(rm.seed, workers=True, verbose=False)
        weights = sft_base(rm, task, logger, stage_dir) if rm.method.init == "sft" else None
        L.seed_everything(rm.seed, workers=True, verbose=False)
        policy = build_policy(rm.model, rm.paths.cache_dir, corpus=task.corpus() if weights is None else None,
                              weights_dir=weights)
        fit_stage(rm, task, policy, logger, stage_dir)
    except BaseException:
        logger.close("FAILED")
        raise
    publish_once(tmp, path)
    logger.set_tags({"workbench.reward_model_path": str(path)})
    logger.close("FINISHED")
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)


# ---- SALSA: a reference soup of SFT warm starts trained with different seeds -------------------------------
def soup_base(cfg: DictConfig, task: Task, parent: RunLogger, run_dir: Path) -> Path:
    """The uniform weight average of SFT runs with the seeds ``method.reference_soup.seeds`` (each a cached SFT
    base, trained now as a child run if missing), cached itself. Each member is what a plain run with that seed
    trains or reuses (the RNG is seeded with it first); the run's own seed is restored afterwards.

    Averaging weights needs members fine-tuned from one shared initialization (SALSA's SFT models come from one
    pretrained model; the seed changes only the data order). A model built from scratch has no such init: its
    seed also draws the initial weights, and the average of two independently initialized networks is not a
    working model. So with ``shared_init`` (default: on for ``model.source=tiny``) each member is an SFT run
    *starting from this run's own SFT base*, which plays the pretrained model's part."""
    import hashlib

    from omegaconf import open_dict

    from workbench.config import validate_reference_soup
    from workbench.policy.models import load_local

    seeds = validate_reference_soup(cfg.method)
    shared = cfg.method.reference_soup.get("shared_init")
    shared = cfg.model.source == "tiny" if shared is None else bool(shared)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    init = sft_base(cfg, task, parent, run_dir / "soup_init") if shared else None
    bases = []
    for seed in seeds:
        member = cfg.copy()
        with open_dict(member):
            member.seed = seed
            if init is not None:  # fine-tune from the shared init, a local model folder, instead of the config's weights
                member.model.source, member.model.path = "local", str(init)
        L.seed_everything(seed, workers=True, verbose=False)
        bases.append(sft_base(member, task, parent, run_dir / f"soup_seed{seed}"))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    key = hashlib.sha256("|".join(p.name for p in bases).encode()).hexdigest()[:16]
    path = Path(cfg.paths.cache_dir) / "sft" / f"soup-{cfg.task.name}-{cfg.model.name}-{key}"
    parent.set_tags({"workbench.reference_soup": json.dumps([str(p) for p in bases]), "workbench.sft_base_path": str(path)})
    if has_weights(path):
        log.info("reference soup: reusing %s", path)
        return path
    members = [load_local(p, cfg.model, field="method.reference_soup") for p in bases]
    vocabularies = {json.dumps(m.tokenizer.get_vocab(), sort_keys=True) for m in members}
    if len(vocabularies) > 1:
        raise ConfigError("method.reference_soup", "the SFT bases have different tokenizers, so their weights do not align",
                          "use a model whose tokenizer does not depend on the seed")
    soup = members[0]
    states = [m.model.state_dict() for m in members]
    with torch.no_grad():
        averaged = {k: sum(s[k].double() for s in states).div(len(states)).to(v.dtype) if v.is_floating_point() else v
                    for k, v in states[0].items()}
    soup.model.load_state_dict(averaged)
    save_once(soup, path)
    log.info("reference soup: averaged %d SFT bases into %s", len(bases), path)
    return path


# ---- entry --------------------------------------------------------------------------------------------
def configure_runtime(cfg: DictConfig) -> None:
    threads = cfg.trainer.get("num_threads")
    if threads:
        torch.set_num_threads(int(threads))
    for name in ("lightning.pytorch", "lightning.fabric", "transformers", "datasets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import transformers
    import warnings

    transformers.utils.logging.disable_progress_bar()  # per-shard bars; the run's own bars say enough
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(cfg: DictConfig) -> dict:
    started = time.time()
    resume_from = None
    if cfg.get("resume"):
        run_dir = Path(cfg.resume).resolve()
        state = load_run_state(run_dir)
        cfg = OmegaConf.create(state["config"])
        cfg.resume = str(run_dir)
    else:
        run_dir = Path(cfg.paths.output_dir).resolve()
        state = None
    validate(cfg)
    configure_runtime(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    task = for_method(build_task(cfg.task), cfg.method)

    if state is not None:
        logger = make_logger(cfg, run_id=state["mlflow_run_id"])
        logger.load_logged_steps()
        logger.set_running()
        resume_from = latest_checkpoint(run_dir)
        log.info("Resuming %s from %s into MLflow run %s", run_dir, resume_from or "its start", state["mlflow_run_id"])
    else:
        logger = make_logger(cfg, extra_tags={"workbench.stage": "main", "workbench.run_dir": str(run_dir), **sweep_tags()})
        if is_rank_zero():
            record_config(logger, cfg)
        save_run_state(run_dir, cfg, logger)

    control = is_control(cfg)
    before_key = ("test_before/normalized_score" if control else
                  "test_before/success_rate" if cfg.method.family == "multi_turn" else "test_before/accuracy")
    try:
        evaluate_before = state is None or before_key not in logger.last_logged  # a resumed run evaluated it already
        if control:
            results = fit_stage(cfg, task, None, logger, run_dir, resume_from, evaluate_before)
        else:
            results = _fit_language_model(cfg, task, logger, run_dir, resume_from, evaluate_before)
    except NonFiniteLossError as e:
        logger.close("FAILED")
        raise SystemExit(f"workbench: {e}") from None
    except BaseException:
        logger.close("KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED")
        raise
    if state is not None and before_key not in results:
        before = logger.experiment.get_run(logger.run_id).data.metrics.get(before_key)
        if before is not None:
            results[before_key] = before
    results["wall_time_s"] = time.time() - started
    logger.log_metrics({"run/wall_time_s": results["wall_time_s"]}, step=results["steps"])
    logger.close("FINISHED")
    summary = {
        "method": cfg.method.name, "task": cfg.task.name, "model": "mlp" if control else cfg.model.name, "seed": cfg.seed,
        "run_dir": str(run_dir), "mlflow_run_id": logger.run_id, "tracking_uri": cfg.logger.tracking_uri,
        "metrics": {k: v for k, v in results.items() if isinstance(v, (int, float))},
    }
    if is_rank_zero():
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        print_summary(summary)
    return summary


def _fit_language_model(cfg: DictConfig, task: Task, logger: RunLogger, run_dir: Path, resume_from: Path | None,
                        evaluate_before: bool) -> dict[str, float]:
    """The reward models a reward entry asks to train, the SFT warm start (or SALSA's soup) when the method asks for
    one, then the method's own stage."""
    reward_model_stages(cfg, task, logger, run_dir)
    weights = sft_base(cfg, task, logger, run_dir) if cfg.method.init == "sft" and not cfg.method.get("reference_soup") else None
    if cfg.method.get("reference_soup"):  # SALSA: policy and reference start from the soup of SFT bases
        weights = soup_base(cfg, task, logger, run_dir)
    # training the warm start here used the random streams; restart them so a run is the same draw whether
    # its SFT base was trained just now or found in the cache
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    policy = build_policy(cfg.model, cfg.paths.cache_dir, corpus=task.corpus() if weights is None else None,
                          tokenizer_dir=run_dir / "tokenizer", weights_dir=weights)
    if is_rank_zero():
        policy.tokenizer.save_pretrained(run_dir / "tokenizer")
    return fit_stage(cfg, task, policy, logger, run_dir, resume_from, evaluate_before)
