"""One GRPO optimizer step: workbench (Lightning ``GroupRLModule``) against TRL 1.16's ``GRPOTrainer``, same
model, prompts, batch, lengths and hyper-parameters, in one process; writes reports/grpo_vs_trl.md.

    python bench/grpo_vs_trl.py --repeats 5 --steps 3                  # default settings 16x8x6 and 16x8x32
    python bench/grpo_vs_trl.py --settings 16x8x6 16x8x32 64x8x6        # add the 64-prompt batch
    python bench/grpo_vs_trl.py --repeats 1 --steps 1 --settings 2x2x4 --override model.hidden_size=32 \\
        --out /tmp/r.md                                                 # smoke run

A setting ``PxGxT`` is P prompts x G completions per prompt, at most T new tokens per completion.

What is built (once per setting):

* the policy: ``model=tiny_llama task=arithmetic`` composed like the CLI (``conf/train.yaml``), random init
  through ``workbench.policy.build_policy`` (tokenizer trained on the task text), saved once with
  ``Policy.save`` to a temporary folder. Both sides load *that folder*: workbench through
  ``build_policy(..., weights_dir=...)`` exactly as a run with ``method.init=sft`` does, TRL from the path
  (its reference model is loaded from the same path, since ``beta > 0``).
* workbench: ``GroupRLModule`` under a Lightning ``Trainer`` with the settings of ``runner.build_trainer``
  (cpu, 32-true, ``log_every_n_steps=1``), minus validation, checkpoints, progress bar and the MLflow logger.
  ``Trainer.fit`` with ``max_steps=K``; a callback times ``on_train_batch_start`` -> ``on_train_batch_end``.
* TRL: ``GRPOTrainer`` with loss_type="grpo", scale_rewards="group", beta=0.04 (k3, ``use_bias_correction_kl
  =False`` so the loss is workbench's), num_iterations=1, steps_per_generation=1, gradient_accumulation_steps=1,
  per_device_train_batch_size=P*G, lr 1e-4, constant schedule, max_grad_norm 1.0, temperature 1.0, top_p 1,
  top_k 0, bf16=False, use_cpu=True, report_to=[], no vLLM, no tqdm. ``trainer.train()`` with ``max_steps=K``;
  a ``TrainerCallback`` times ``on_step_begin`` -> ``on_step_end``. Reward: the task's verifier (what
  workbench's registry ``correctness`` computes).

Timing: ``torch.set_num_threads`` (default 2) for both; ``--warmup`` steps per side first, then ``--repeats``
rounds, each running K=``--steps`` steps of workbench then K of TRL (alternating, so load from other jobs
hits both alike). Medians of per-step wall time over all timed steps; ratio = TRL / workbench. Neither timed
window contains logger I/O (both frameworks log after the hook that closes the window).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/jobs.py, also when loaded by file path (tests)
from jobs import loadavg, machine_info, write_report_with_profiles  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_SETTINGS = ["16x8x6", "16x8x32"]


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_setting(text: str) -> tuple[int, int, int]:
    try:
        p, g, t = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"setting '{text}' is not PxGxT, e.g. 16x8x6") from None
    if min(p, g, t) < 1 or g < 2:
        raise argparse.ArgumentTypeError(f"setting '{text}': need P>=1, G>=2, T>=1")
    return p, g, t


# ---- config and shared weights ------------------------------------------------------------------------------
def compose(prompts: int, group: int, max_new: int, threads: int, extra: list[str] | None = None):
    """The config a CLI run ``method=grpo model=tiny_llama task=arithmetic`` composes, at this batch and length."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = [
        "method=grpo", "model=tiny_llama", "task=arithmetic",
        f"method.batch_size={prompts}", f"method.group_size={group}", f"method.max_new_tokens={max_new}",
        "trainer.progress_bar=false", f"trainer.num_threads={threads}", *(extra or []),
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def save_shared_policy(cfg, task, folder: Path) -> Path:
    """Random-init tiny Llama + task tokenizer, built as workbench builds it, written once for both sides."""
    from workbench.policy import build_policy

    policy = build_policy(cfg.model, cfg.paths.cache_dir, corpus=task.corpus())
    policy.save(folder)
    return folder


# ---- workbench side -----------------------------------------------------------------------------------------
class WorkbenchSide:
    def __init__(self, cfg, task, weights: Path, workdir: Path):
        import lightning as L

        from workbench.methods import method_class
        from workbench.policy import build_policy

        self.L = L
        self.cfg = cfg
        self.workdir = workdir
        policy = build_policy(cfg.model, cfg.paths.cache_dir, weights_dir=weights)
        self.module = method_class(cfg.method.module)(policy, task, cfg.method, cfg.trainer)
        self._sample_s = 0.0
        self._lengths: list[float] = []
        inner = self.module.generator.__call__

        @functools.wraps(inner)
        def timed_generate(*args, **kwargs):  # the sampler alone (rewards are timed by the module with it)
            t0 = time.perf_counter()
            rollout = inner(*args, **kwargs)
            self._sample_s += time.perf_counter() - t0
            self._lengths.append(rollout.lengths.float().mean().item())
            return rollout

        self.module.generator = _CallShim(self.module.generator, timed_generate)
        self.records: list[dict] = []

    def run(self, steps: int, keep: bool = True) -> list[dict]:
        side = self
        L = self.L

        class Timer(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                side._sample_s = 0.0
                side._lengths.clear()
                self.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                dt = time.perf_counter() - self.t0
                t = dict(pl_module._times)
                rec = dict(step=dt, sample=side._sample_s,
                           rewards=t.get("generation", 0.0) - side._sample_s,  # rewards + verifier, inside _score
                           ref=t.get("logprobs", 0.0), update=t.get("update", 0.0),
                           length=statistics.mean(side._lengths) if side._lengths else float("nan"),
                           threads=torch.get_num_threads())
                rec["other"] = dt - rec["sample"] - rec["rewards"] - rec["ref"] - rec["update"]
                out.append(rec)

        out: list[dict] = []
        trainer = L.Trainer(
            accelerator="cpu", devices=1, precision="32-true", max_steps=steps, max_epochs=-1,
            limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=[Timer()], default_root_dir=self.workdir,
        )
        trainer.fit(self.module)
        if keep:
            self.records.extend(out)
        return out


class _CallShim:
    """Forwards everything to the real generator; calls go through the timing wrapper."""

    def __init__(self, gen, call):
        self._gen, self._call = gen, call

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._gen, name)


# ---- TRL side -------------------------------------------------------------------------------------------------
class TRLSide:
    def __init__(self, cfg, task, weights: Path, workdir: Path):
        from datasets import Dataset
        from transformers import AutoTokenizer, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        m = cfg.method
        P, G, T = int(m.batch_size), int(m.group_size), int(m.max_new_tokens)
        train = task.split("train")
        dataset = Dataset.from_dict({"prompt": list(train["prompt"]), "answer": list(train["answer"])})

        def correctness(prompts, completions, answer, **_):
            return [float(task.verify(c, a)) for c, a in zip(completions, answer)]

        args = GRPOConfig(
            output_dir=str(workdir / "trl"), use_cpu=True, bf16=False, fp16=False, report_to=[],
            save_strategy="no", disable_tqdm=True, seed=int(cfg.seed),
            per_device_train_batch_size=P * G, gradient_accumulation_steps=1, num_generations=G,
            steps_per_generation=1, num_iterations=1, max_completion_length=T,
            temperature=float(m.temperature), top_p=float(m.top_p), top_k=0,
            beta=float(m.beta), use_bias_correction_kl=False, epsilon=float(m.clip_eps_low),
            epsilon_high=float(m.clip_eps_high), loss_type="grpo", scale_rewards="group",
            learning_rate=float(m.lr), weight_decay=float(m.weight_decay), adam_beta1=float(m.adam_betas[0]),
            adam_beta2=float(m.adam_betas[1]), lr_scheduler_type="constant", max_grad_norm=float(m.max_grad_norm),
            max_steps=1, dataloader_num_workers=0,
            gradient_checkpointing=False,  # TRL's default is True; workbench does not checkpoint, so same work needs it off
        )
        tokenizer = AutoTokenizer.from_pretrained(weights)
        tokenizer.padding_side = "left"
        self.trainer = GRPOTrainer(model=str(weights), reward_funcs=[correctness], args=args,
                                   train_dataset=dataset, processing_class=tokenizer)
        tr = self.trainer
        if getattr(tr.model, "is_gradient_checkpointing", False):
            raise RuntimeError("TRL's model trains with activation checkpointing; the comparison would be off")
        self.acc = dict(sample=0.0, rewards=0.0, ref=0.0, gen_and_score=0.0)

        def wrap(name, key, only_no_grad=False):
            inner = getattr(tr, name)

            @functools.wraps(inner)
            def timed(*a, **kw):
                t0 = time.perf_counter()
                try:
                    return inner(*a, **kw)
                finally:
                    if not only_no_grad or not torch.is_grad_enabled():
                        self.acc[key] += time.perf_counter() - t0

            setattr(tr, name, timed)

        wrap("_generate", "sample")  # tokenize + model.generate + decode + length metrics
        wrap("_calculate_rewards", "rewards")
        wrap("_get_per_token_logps_and_entropies", "ref", only_no_grad=True)  # the reference pass (no old logps here)
        wrap("_generate_and_score_completions", "gen_and_score")
        side = self
        self.records: list[dict] = []

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                for k in side.acc:
                    side.acc[k] = 0.0
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                dt = time.perf_counter() - self.t0
                a = side.acc
                lengths = tr._metrics["train"].get("completions/mean_length") or [float("nan")]
                rec = dict(step=dt, sample=a["sample"], rewards=a["rewards"], ref=a["ref"],
                           update=dt - a["gen_and_score"], length=lengths[-1], threads=torch.get_num_threads())
                rec["other"] = a["gen_and_score"] - a["sample"] - a["rewards"] - a["ref"]
                side._out.append(rec)

        self._out: list[dict] = []
        tr.add_callback(Timer())

    def run(self, steps: int, keep: bool = True) -> list[dict]:
        self._out = []
        self.trainer.args.max_steps = steps
        self.trainer.train()
        if keep:
            self.records.extend(self._out)
        return list(self._out)


# ---- one setting ------------------------------------------------------------------------------------------------
def median(records: list[dict], key: str) -> float:
    values = [r[key] for r in records if r[key] == r[key]]
    return statistics.median(values) if values else float("nan")


def bench_setting(setting: tuple[int, int, int], repeats: int, steps: int, warmup: int, threads: int,
                  overrides: list[str] | None = None, profile: bool = False,
                  wb_overrides: list[str] | None = None) -> dict:
    import lightning as L

    from workbench.runner import configure_runtime
    from workbench.tasks import build_task

    P, G, T = setting
    name = f"{P}x{G}x{T}@{threads}t"
    cfg = compose(P, G, T, threads, overrides)
    wb_cfg = compose(P, G, T, threads, [*(overrides or []), *(wb_overrides or [])]) if wb_overrides else cfg
    configure_runtime(cfg)
    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning", "transformers", "trl", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    L.seed_everything(int(cfg.seed), verbose=False)
    with tempfile.TemporaryDirectory(prefix="grpo-vs-trl-") as tmp:
        tmp = Path(tmp)
        say(f"[{name}] building task, tokenizer and the shared random-init policy")
        task = build_task(cfg.task)
        weights = save_shared_policy(cfg, task, tmp / "policy")
        say(f"[{name}] building workbench GroupRLModule and TRL GRPOTrainer from {weights.name}/")
        wb = WorkbenchSide(wb_cfg, task, weights, tmp / "wb")
        trl = TRLSide(cfg, task, weights, tmp)
        n_params = sum(p.numel() for p in wb.module.model.parameters())
        for side_name, side in (("workbench", wb), ("TRL", trl)):
            if warmup:
                say(f"[{name}] warm-up {side_name}: {warmup} step(s)")
                torch.set_num_threads(threads)
                side.run(warmup, keep=False)
        for r in range(repeats):
            for side_name, side in (("workbench", wb), ("TRL", trl)):
                torch.set_num_threads(threads)
                recs = side.run(steps)
                say(f"[{name}] repeat {r + 1}/{repeats} {side_name:9s}: "
                    + " ".join(f"{x['step']:.3f}s" for x in recs) + f"  (mean len {statistics.mean(x['length'] for x in recs):.1f})")
        result = dict(setting=name, prompts=P, group=G, max_new=T, threads=threads, params=n_params,
                      workbench=wb.records, trl=trl.records)
        for side_name, recs in (("workbench", wb.records), ("trl", trl.records)):
            result[f"{side_name}_median"] = {k: median(recs, k) for k in ("step", "sample", "rewards", "ref", "update", "other", "length")}
        result["ratio"] = result["trl_median"]["step"] / result["workbench_median"]["step"]
        say(f"[{name}] median step: workbench {result['workbench_median']['step']:.3f}s, "
            f"TRL {result['trl_median']['step']:.3f}s, TRL/workbench {result['ratio']:.2f}x")
        if profile:
            result["profile"] = profile_both(wb, trl, threads, name)
    return result


def profile_both(wb: WorkbenchSide, trl: TRLSide, threads: int, name: str, rows: int = 14) -> dict[str, str]:
    """torch.profiler over one step of each side: the ops where the time goes (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    tables = {}
    for side_name, side in (("workbench", wb), ("TRL", trl)):
        say(f"[{name}] torch.profiler: one {side_name} step")
        torch.set_num_threads(threads)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            side.run(1, keep=False)
        tables[side_name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)
    return tables


# ---- report -------------------------------------------------------------------------------------------------------
DIFFERENCES = [
    "* Model passes per step are the same: one sampling pass (HF `generate`, KV cache), one reference log-prob pass "
    "(no grad), one policy forward + backward. With `num_iterations=1`, `steps_per_generation=1` and gradient "
    "accumulation 1, TRL's `generate_every` divides `gradient_accumulation_steps`, so `old_per_token_logps` is `None` "
    "and `_compute_loss` uses `per_token_logps.detach()` (no extra pass); workbench likewise skips the old log-probs "
    "when `inner_iterations=1` (the ratio is 1 in value, gradients identical).",
    "* Entropy: both compute per-token entropy in the training forward (TRL's fused head always returns it for the "
    "policy; workbench `with_entropy=True` under `no_grad`); the reference pass computes log-probs only on both sides.",
    "* LM head: workbench asks the model for `logits_to_keep=T+1` (only completion positions go through the head) and "
    "materialises those fp32 logits; TRL patches the forward with its chunked fused log-prob head, which on CPU "
    "(non-Triton path) projects *every* prompt+completion position in chunks and masks afterwards, without keeping "
    "the logits.",
    "* Position ids: workbench passes them from the attention mask (left padding aware, as in generation); TRL passes "
    "none. A numerical, not a timing, difference.",
    "* Batch plumbing: TRL's sampler repeats every prompt G times and generates P*G rows; workbench tokenizes P prompts "
    "and `repeat_interleave`s them. TRL then shuffles and splits the generation batch (`shuffle_sequence_dict`, "
    "`split_tensor_dict`) and gathers metrics through `accelerate`; workbench logs ~15 scalars with `self.log`.",
    "* Loss: identical GRPO objective (clipped ratio, per-sequence token mean, k3 KL, beta 0.04) - "
    "`tests/test_trl_parity.py` checks loss and gradients against TRL's `_compute_loss`. TRL's default "
    "`use_bias_correction_kl=True` (KL times the IS ratio, 1 here) is switched off to match.",
    "* Optimizer: TRL uses `adamw_torch_fused` (transformers' default on torch >= 2.8), workbench `torch.optim.AdamW` "
    "(foreach); workbench warms the lr up over 10 steps, TRL is constant here. Neither changes step time measurably "
    "at 0.8M parameters.",
]


def write_report(results: list[dict], out: Path, meta: dict) -> str:
    m = meta["machine"]
    lines = [
        "# One GRPO step: workbench vs TRL 1.16 GRPOTrainer (CPU)",
        "",
        f"Generated by `bench/grpo_vs_trl.py` on {meta['date']}.",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Machine: {m['cpus']} CPUs ({m['platform']}), Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, TRL {m['trl']}, Lightning {m['lightning']}; "
        f"torch threads {meta['threads']} for both sides (the suffix `@Nt` of a setting).",
        *([f"Workbench-only overrides: `{' '.join(meta['wb_overrides'])}`."] if meta.get("wb_overrides") else []),
        f"Load average (1/5/15 min) at start: {meta['load_start']}; at end: {meta['load_end']}.",
        "",
        "## Settings",
        "",
        "| | workbench | TRL |",
        "|---|---|---|",
        "| policy | tiny_llama (random init, task tokenizer), saved once, loaded from that folder | same folder |",
        "| reference (KL) | frozen deep copy of the policy | `from_pretrained` of the same folder |",
        "| loop | Lightning `Trainer.fit(max_steps=K)`, `GroupRLModule` | `GRPOTrainer.train()` with `max_steps=K` |",
        "| prompts x completions | `method.batch_size` x `method.group_size` | `per_device_train_batch_size`=P*G, `num_generations`=G |",
        "| updates per generation | `inner_iterations=1` | `num_iterations=1`, `steps_per_generation=1`, grad. accumulation 1 |",
        "| loss | clipped ratio, `seq_mean_token_mean`, k3 KL, beta 0.04, eps 0.2 | `loss_type=grpo`, `scale_rewards=group`, beta 0.04, eps 0.2, `use_bias_correction_kl=False` |",
        "| sampling | HF `generate`, KV cache, temperature 1.0, top_p 1, top_k 0 | same (`use_vllm=False`) |",
        "| optimizer | AdamW lr 1e-4 (torch default impl.), grad-norm clip 1.0 | AdamW lr 1e-4 (`adamw_torch_fused`, the transformers default), clip 1.0 |",
        "| reward | registry `correctness` (task verifier) | python function calling the same verifier |",
        "| precision / device | fp32, CPU | `bf16=False`, `use_cpu=True` |",
        "| logging in the timed window | none (logger off; Lightning logs after `on_train_batch_end`) | none (`report_to=[]`; logs after `on_step_end`) |",
        "",
        f"Timing: {meta['warmup']} warm-up step(s) per side, then {meta['repeats']} repeats x {meta['steps']} steps, "
        "workbench and TRL alternating per repeat; per-step wall time from the framework's step hooks; medians.",
        "",
        "## Results (median seconds per optimizer step)",
        "",
        "| setting (P x G x T @ threads) | params | workbench step | TRL step | TRL / workbench | mean completion length wb / TRL | steps timed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        w, t = r["workbench_median"], r["trl_median"]
        lines.append(f"| {r['setting']} | {r['params'] / 1e6:.2f}M | {w['step']:.3f} | {t['step']:.3f} | **{r['ratio']:.2f}x** | "
                     f"{w['length']:.1f} / {t['length']:.1f} | {len(r['workbench'])} / {len(r['trl'])} |")
    lines += [
        "",
        "Breakdown (medians, seconds; `sample` = prompt tokenization + `generate` + decode, `rewards` = reward",
        "function(s) and verifier, `ref` = reference log-prob pass, `update` = policy forward + backward + clip +",
        "optimizer step (TRL: the step minus generate-and-score), `other` = the rest (advantages, metrics, glue):",
        "",
        "| setting | side | step | sample | rewards | ref | update | other |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for side, key in (("workbench", "workbench_median"), ("TRL", "trl_median")):
            v = r[key]
            lines.append(f"| {r['setting']} | {side} | {v['step']:.3f} | {v['sample']:.3f} | {v['rewards']:.3f} | "
                         f"{v['ref']:.3f} | {v['update']:.3f} | {v['other']:.3f} |")
    ratios = [r["ratio"] for r in results]
    met = all(x >= 1.5 for x in ratios)
    lines += [
        "",
        "## Goal: workbench >= 1.5x faster than TRL per GRPO step",
        "",
        (f"**Met** in every setting measured (TRL/workbench {', '.join(f'{x:.2f}x' for x in ratios)})." if met else
         f"**Not met** (TRL/workbench {', '.join(f'{x:.2f}x' for x in ratios)}; "
         f"{sum(x >= 1.5 for x in ratios)} of {len(ratios)} settings reach 1.5x)."),
    ]
    lines += ["", "## What differs between the two loops (read from the code, not measured)", "", *DIFFERENCES]
    return write_report_with_profiles(lines, results, out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", type=parse_setting, default=[parse_setting(s) for s in DEFAULT_SETTINGS],
                    help="PxGxT: prompts x completions per prompt x max new tokens (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds (workbench K steps, TRL K steps)")
    ap.add_argument("--steps", type=int, default=3, help="K: optimizer steps per side per round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per side before the rounds")
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="torch.set_num_threads for both sides; several values: one full pass each (default 2)")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for both sides, e.g. model.hidden_size=32")
    ap.add_argument("--wb-override", nargs="*", default=[],
                    help="Hydra overrides for the workbench side only (exploration, e.g. method.shared_prefix=true)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler over one step of each side, into the report")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "grpo_vs_trl.md")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads[0])
    meta = dict(date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), machine=machine_info(),
                command="python " + " ".join(["bench/grpo_vs_trl.py", *(argv if argv is not None else sys.argv[1:])]),
                threads=", ".join(map(str, args.threads)), wb_overrides=args.wb_override, warmup=args.warmup, repeats=args.repeats, steps=args.steps, load_start=loadavg())
    say(f"load average at start: {meta['load_start']}; torch threads {meta['threads']}")
    results = [bench_setting(s, args.repeats, args.steps, args.warmup, threads, args.override,
                             args.profile and i == 0, args.wb_override)
               for threads in args.threads for i, s in enumerate(args.settings)]
    meta["load_end"] = loadavg()
    say(f"load average at end: {meta['load_end']}")
    write_report(results, args.out, meta)
    say(f"wrote {args.out}")
    for r in results:
        print(f"  {r['setting']:>10s}: workbench {r['workbench_median']['step']:.3f}s  TRL {r['trl_median']['step']:.3f}s  "
              f"TRL/workbench {r['ratio']:.2f}x")
    return results


if __name__ == "__main__":
    main()
