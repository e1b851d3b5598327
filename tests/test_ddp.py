"""DDP on CPU: two gloo processes, each on its half of a global batch, train and log the loss of one process on
the whole batch (SFT, DPO, GRPO); the CLI under trainer=ddp_cpu shards generation and logs from rank 0 only.

The parity tests run each module's own training_step in 2 spawned processes and in this one, with the halves
chosen so the ranks hold very different token counts (the case a per-rank token mean gets wrong). Only
generation and the reward are scripted (fixed completions and rewards), so both sides train on the same samples.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import FAST, FAST_GRPO, FAST_PREFERENCE, cli_env, compose_cfg, python
from workbench.methods import method_class
from workbench.methods.self_correction.protocol import for_method
from workbench.policy import build_policy
from workbench.policy.sampler import Rollout, encode_prompts
from workbench.tasks import build_task

G = 3  # completions per prompt in the scripted GRPO rollouts
# rank 0's prompts get 1-2 token completions, rank 1's 6-8: a per-rank token mean weighs them very differently
LENGTHS = [[1, 2, 1], [2, 1, 2], [6, 8, 7], [8, 7, 6]]
REWARDS = [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]

CASES = {  # name -> overrides; every case runs the module's real training_step
    "sft": ["method=sft", *FAST],
    "dpo": ["method=dpo", *FAST, *FAST_PREFERENCE],
    "dpo_sft": ["method=dpo", *FAST, *FAST_PREFERENCE, "method.loss_type=[sigmoid,sft]", "method.loss_weights=[1.0,0.5]"],
    "grpo": ["method=grpo", *FAST, *FAST_GRPO, f"method.group_size={G}"],
    "dapo_token_mean": ["method=grpo", *FAST, *FAST_GRPO, f"method.group_size={G}", "method.loss_agg=token_mean",
                        "method.minibatch_size=3"],
    "reinforce_pp": ["method=grpo", *FAST, *FAST_GRPO, f"method.group_size={G}", "method.advantage=reinforce_pp"],
    "batch_std_dr_grpo": ["method=grpo", *FAST, *FAST_GRPO, f"method.group_size={G}", "+method.advantage_params.scale=batch",
                          "method.loss_agg=seq_mean_token_sum_norm"],
}


class ScriptedGenerator:
    """Stands in for sampling: prompt i of the global batch always gets the completions of LENGTHS[i]."""

    def __init__(self, prompt_index: dict[str, int], vocab: int, pad_id: int):
        self.prompt_index, self.pad_id = prompt_index, pad_id
        gen = torch.Generator().manual_seed(0)
        self.tokens = [[torch.randint(4, vocab, (n,), generator=gen) for n in row] for row in LENGTHS]
        self.prompts: list[str] = []  # what this process was asked to generate for

    def __call__(self, model, tokenizer, prompts, n, **_):
        self.prompts += prompts
        rows = [self.tokens[self.prompt_index[p]][j] for p in prompts for j in range(n)]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
        prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, "cpu")
        texts = [f"{self.prompt_index[p]}/{j}" for p in prompts for j in range(n)]
        return Rollout(prompt_ids.repeat_interleave(n, 0), prompt_mask.repeat_interleave(n, 0), ids, mask, texts,
                       torch.zeros(len(rows), dtype=torch.bool))

    def sync(self, model):
        pass


def scripted_rewards(prompts, texts, **_):
    values = torch.tensor([REWARDS[int(i)][int(j)] for i, j in (t.split("/") for t in texts)])
    return values, {"correctness": values}


def build_module(cfg, policy_dir: Path):
    task = for_method(build_task(cfg.task), cfg.method)
    policy = build_policy(cfg.model, cfg.paths.cache_dir, weights_dir=policy_dir)
    return method_class(cfg.method.module)(policy, task, cfg.method, cfg.trainer)


def global_rows(case: str, module) -> list[dict]:
    """4 training rows, sorted so the first half (rank 0's) has the shortest targets and the second the longest."""
    split = module.task.split("train")
    rows = [dict(split[i], row_index=i) for i in range(16)]
    if case.startswith("grpo") or case in ("dapo_token_mean", "reinforce_pp", "batch_std_dr_grpo"):
        return rows[:4]  # completions are scripted: their lengths are set by LENGTHS
    if case == "sft":
        rows.sort(key=lambda r: len(module.tokenizer(module.policy.completion_text(r["target"]))["input_ids"]))
        return rows[:2] + rows[-2:]
    # the synthetic pairs' completions are all a number of 1-2 tokens: lengthen rank 1's by hand
    return rows[:2] + [dict(r, chosen=" ".join([r["chosen"]] * 4), rejected=" ".join([r["rejected"]] * 3)) for r in rows[2:4]]


def train_step(case: str, cfg, policy_dir: Path, rows: list[dict], all_rows: list[dict]) -> dict:
    """One training_step of the case's module on ``rows``: the train/loss it logs, its gradients, what it sampled."""
    module = build_module(cfg, policy_dir)
    # move the policy off its frozen reference (same draw in every process), so that KL terms and DPO margins,
    # and with them each rank's loss, are not all equal
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=noise))
    logged: dict[str, float] = {}
    module.log = lambda name, value, **_: logged.__setitem__(name, float(value))
    module.log_dict = lambda values, **_: logged.update({k: float(v) for k, v in values.items()})
    grads: dict[str, torch.Tensor] = {}

    def capture():
        grads.update({k: p.grad.detach().clone() for k, p in module.model.named_parameters() if p.grad is not None})

    if module.family == "group_rl":  # manual optimization: the step drives its own backward and optimizer step
        prompts = module.formatted([r["prompt"] for r in all_rows])
        module.generator = ScriptedGenerator({p: i for i, p in enumerate(prompts)}, len(module.tokenizer),
                                             module.tokenizer.pad_token_id)
        module.rewards = scripted_rewards
        opt = torch.optim.SGD(module.model.parameters(), lr=0.0)
        module.optimizers = lambda *a, **k: opt
        module.lr_schedulers = lambda *a, **k: None
        module.manual_backward = lambda loss, *a, **k: loss.backward()
        module._optimizer_step = lambda opt, sched: capture()
        module.training_step({k: [r[k] for r in rows] for k in rows[0]}, 0)
        sampled = len(module.generator.prompts)
        tokens = sum(sum(LENGTHS[module.generator.prompt_index[p]]) for p in module.generator.prompts)
    else:
        batch = module.train_collate(rows)
        module.training_step(batch, 0).backward()
        capture()
        sampled, tokens = len(rows), int(batch["completion_mask"][0::2 if module.family == "preference" else 1].sum())
    return {"loss": logged["train/loss"], "grads": grads, "sampled": sampled, "tokens": tokens, "logged": logged}


def _worker(rank: int, init: str, policy_dirs: dict, cfgs: dict, rows: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    results = {}
    for case, cfg in cfgs.items():
        half = len(rows[case]) // 2
        mine = rows[case][rank * half:(rank + 1) * half]
        res = train_step(case, cfg, Path(policy_dirs[case]), mine, rows[case])
        for g in res["grads"].values():  # what DDP does to the gradients: the mean over ranks
            dist.all_reduce(g)
            g /= 2
        results[case] = {k: res[k] for k in ("loss", "grads", "sampled", "tokens")}
        if "train/prompts_sampled" in res["logged"]:
            results[case]["prompts_sampled"] = res["logged"]["train/prompts_sampled"]
            results[case]["prompts_sampled_rank_max"] = res["logged"]["train/prompts_sampled_rank_max"]
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    """(single-process results, [rank 0 results, rank 1 results]) for every case."""
    tmp = tmp_path_factory.mktemp("ddp")
    cfgs, policy_dirs, rows, single = {}, {}, {}, {}
    for case, overrides in CASES.items():
        cfg = compose_cfg(overrides, tmp / case)
        task = for_method(build_task(cfg.task), cfg.method)
        policy_dir = tmp / f"policy-{cfg.task.name}"
        if not policy_dir.exists():  # one tiny model per task, loaded from disk by every process
            torch.manual_seed(0)
            build_policy(cfg.model, cfg.paths.cache_dir, corpus=task.corpus()).save(policy_dir)
        cfgs[case], policy_dirs[case] = cfg, str(policy_dir)
        rows[case] = global_rows(case, build_module(cfg, policy_dir))
        torch.manual_seed(0)
        single[case] = train_step(case, cfg, policy_dir, rows[case], rows[case])
    mp.spawn(_worker, args=(f"file://{tmp / 'init'}", policy_dirs, cfgs, rows, str(tmp)), nprocs=2, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return single, ranks


def _close(a, b):
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_log_and_train_the_single_process_loss(parity, case):
    single, ranks = parity
    for rank in ranks:
        _close(rank[case]["loss"], single[case]["loss"])  # the logged train/loss, on either rank
        assert rank[case]["grads"].keys() == single[case]["grads"].keys()
        for name, grad in single[case]["grads"].items():
            _close(rank[case]["grads"][name], grad)
    assert any(g.abs().max() > 1e-3 for g in single[case]["grads"].values())  # the comparison has something to compare


@pytest.mark.parametrize("case", list(CASES))
def test_the_halves_hold_unequal_tokens(parity, case):
    """Guards the parity tests: rank 0's half must hold far fewer (chosen / completion) tokens than rank 1's,
    the case where the mean of per-rank token means is not the global token mean."""
    single, ranks = parity
    assert ranks[0][case]["tokens"] + ranks[1][case]["tokens"] == single[case]["tokens"]
    assert ranks[0][case]["tokens"] < 0.8 * ranks[1][case]["tokens"]


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][0] == "method=grpo"])
def test_each_rank_generates_only_its_prompts(parity, case):
    single, ranks = parity
    assert single[case]["sampled"] == 4
    for rank in ranks:
        assert rank[case]["sampled"] == 2  # the generator was asked for G samples of 2 prompts on each rank
        assert rank[case]["prompts_sampled"] == 4 and rank[case]["prompts_sampled_rank_max"] == 2


# ---- the CLI, as a user runs it ------------------------------------------------------------------------
def _runs(uri):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("workbench")
    return client, client.search_runs([exp.experiment_id])


def _ddp_cli(tmp_path, method: str, extra: list[str]):
    env = cli_env(tmp_path)
    cmd = [python(), "-m", "workbench.train", "trainer=ddp_cpu", f"method={method}", *FAST, *extra,
           "trainer.max_steps=2", "method.val_check_interval=2", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = _runs(env["MLFLOW_TRACKING_URI"])
    main = [r for r in runs if r.data.tags.get("workbench.stage") == "main"]
    assert len(main) == 1 and main[0].info.status == "FINISHED"  # rank 1 opens no run of its own
    assert main[0].data.params["trainer.devices"] == "2"
    # besides the main run only its SFT warm start, and only when the session's cache did not have it yet
    others = [r for r in runs if r.info.run_id != main[0].info.run_id]
    assert all(r.data.tags.get("workbench.stage") == "sft_base" for r in others) and len(others) <= 1
    return client, main[0], runs


def test_ddp_cpu_grpo_shards_generation_and_logs_once(tmp_path):
    client, main, runs = _ddp_cli(tmp_path, "grpo", FAST_GRPO)
    history = {k: [m.value for m in client.get_metric_history(main.info.run_id, k)]
               for k in ("train/loss", "train/prompts_sampled", "train/prompts_sampled_rank_max")}
    assert len(history["train/loss"]) == 2
    # FAST's method.batch_size=4 prompts per step: 4 sampled in all, no rank more than 2, so each exactly 2
    assert history["train/prompts_sampled"] == [4.0, 4.0]
    assert history["train/prompts_sampled_rank_max"] == [2.0, 2.0]


def test_ddp_cpu_dpo_runs_with_one_mlflow_run(tmp_path):
    client, main, runs = _ddp_cli(tmp_path, "dpo", FAST_PREFERENCE)
    assert len(client.get_metric_history(main.info.run_id, "train/loss")) == 2
