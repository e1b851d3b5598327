"""What a run leaves in MLflow, read back from the sqlite store; SFT's loss falls."""

import statistics

import mlflow
import yaml
from omegaconf import OmegaConf

from workbench.config import flatten
from workbench.train import run


def test_mlflow_record_reads_back(fast_cfg, tmp_path):
    cfg = fast_cfg("sft", ["trainer.max_steps=6"])
    summary = run(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    r = client.get_run(summary["mlflow_run_id"])
    assert r.info.status == "FINISHED"
    # params: the whole resolved config, flattened
    expected = flatten(OmegaConf.to_container(cfg, resolve=True))
    assert r.data.params["method.lr"] == expected["method.lr"]
    assert r.data.params["model.hidden_size"] == "32"
    assert r.data.params["task.operators"] == '["+"]'
    assert set(expected) <= set(r.data.params)
    # tags
    assert r.data.tags["workbench.family"] == "sft"
    assert r.data.tags["workbench.method"] == "sft"
    assert len(r.data.tags["git.commit"]) in (40, len("unknown"))
    assert r.data.tags["mlflow.runName"] == "sft-arithmetic-tiny_llama-s0"
    # metrics every step, each step once
    for key in ("train/loss", "train/step_time", "train/tokens_per_s", "train/lr", "train/completion_length"):
        steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
        assert sorted(steps) == list(range(6)), key
    val_steps = [m.step for m in client.get_metric_history(r.info.run_id, "val/accuracy")]
    assert len(val_steps) == 3 and len(set(val_steps)) == 3
    for key in ("test/accuracy", "test_before/accuracy", "run/wall_time_s"):
        assert len(client.get_metric_history(r.info.run_id, key)) == 1, key
    # the resolved config as a YAML artifact
    local = client.download_artifacts(r.info.run_id, "config.yaml", str(tmp_path / "dl"))
    assert yaml.safe_load(open(local)) == OmegaConf.to_container(cfg, resolve=True)


def test_grpo_logs_rl_metrics_and_links_its_sft_base(fast_cfg):
    cfg = fast_cfg("grpo", ["method.base.max_steps=2", "method.base.val_check_interval=2"])  # a base no other test uses
    summary = run(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    r = client.get_run(summary["mlflow_run_id"])
    for key in ("train/reward", "train/accuracy", "train/kl", "train/entropy", "train/clip_frac", "train/loss",
                "train/completion_length", "train/step_time", "train/tokens_per_s"):
        steps = [m.step for m in client.get_metric_history(r.info.run_id, key)]
        assert sorted(steps) == list(range(4)), key
    base = client.get_run(r.data.tags["workbench.sft_base_run_id"])  # trained first, as a child run
    assert base.data.tags["mlflow.parentRunId"] == r.info.run_id
    assert base.data.tags["workbench.stage"] == "sft_base"
    assert base.info.status == "FINISHED"
    assert base.data.params["trainer.max_steps"] == "2"
    # a second run with the same base config reuses the cache: no new child run
    again = run(fast_cfg("grpo", ["method.base.max_steps=2", "method.base.val_check_interval=2", "seed=0"], run_dir="run2"))
    assert "workbench.sft_base_run_id" not in client.get_run(again["mlflow_run_id"]).data.tags
    assert client.get_run(again["mlflow_run_id"]).data.tags["workbench.sft_base_path"] == base.data.tags["workbench.sft_base_path"]


def test_sft_loss_falls(fast_cfg):
    cfg = fast_cfg("sft", ["trainer.max_steps=60", "method.val_check_interval=60", "method.batch_size=32"])
    summary = run(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    losses = [m.value for m in sorted(client.get_metric_history(summary["mlflow_run_id"], "train/loss"), key=lambda m: m.step)]
    assert len(losses) == 60
    first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
    assert last < 0.7 * first, (first, last)
