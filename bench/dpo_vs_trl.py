"""One DPO optimizer step: workbench (Lightning ``PreferenceModule``) against TRL 1.16's ``DPOTrainer``, same model,
same pairs, same token ids, same loss and hyper-parameters, in one process; writes reports/dpo_vs_trl.md.

    python bench/dpo_vs_trl.py --profile    # 16x32x32 16x128x64 at 2 and 1 threads, 4 workbench variants vs TRL
    python bench/dpo_vs_trl.py --variants default no_shared_prefix:method.shared_prefix=false   # only these two
    python bench/dpo_vs_trl.py --repeats 1 --steps 1 --warmup 2 --settings 2x4x4 \\
        --override model.hidden_size=32 --out /tmp/r.md                  # smoke run

A setting ``BxPxC`` is B pairs per step, prompts of P tokens at most, completions of C tokens at most (EOS included).

What is built (once per setting):

* the policy: ``model=tiny_llama`` composed like the CLI (``conf/train.yaml`` with ``method=dpo
  task=synthetic_preference``), random init through ``workbench.policy.build_policy`` (tokenizer trained on the task
  text), saved once with ``Policy.save``. Both sides load *that folder* (workbench through ``build_policy(...,
  weights_dir=...)`` as a run with ``method.init=sft`` does; TRL from the path, its reference model too).
* the data: B pairs of digit strings (every digit is one token of this tokenizer), prompt lengths drawn uniformly in
  [P/2, P] tokens and completion lengths in [C/2, C] tokens including EOS, seeded. The split holds exactly those B
  pairs, so every step of both sides trains on the same batch (in a shuffled order). The script checks that TRL's
  tokenization (prompt + completion tokenized together, EOS text appended) gives the very token ids of
  workbench's ``PairEncoder`` (prompt and completion tokenized apart, EOS id appended).
* workbench: ``PreferenceModule`` (``loss_type: sigmoid``) under a Lightning ``Trainer`` with the
  settings of ``runner.build_trainer`` (cpu, 32-true, ``log_every_n_steps=1``, ``gradient_clip_val =
  method.max_grad_norm``) minus validation, checkpoints, progress bar and the MLflow logger; ``Trainer.fit`` with
  ``max_steps=K``; a callback times ``on_train_batch_start`` -> ``on_train_batch_end`` (training_step: one
  concatenated forward of the 2B rows + the reference forward + loss + logging; backward; clip; AdamW step). One
  module per *variant* (``--variants``, Hydra overrides of the workbench side: by default the ``method=dpo``
  defaults, i.e. live reference and the shared prefix (each prompt encoded once for its chosen and rejected
  completion), ``method.shared_prefix=false`` (the same model passes as TRL), ``method.reference=precomputed``,
  and both).
* TRL: ``DPOTrainer`` with ``loss_type=["sigmoid"]``, the same beta, ``per_device_train_batch_size=B``, gradient
  accumulation 1, the same lr / betas / weight decay / clip, constant schedule, ``bf16=False``, ``use_cpu=True``,
  ``report_to=[]``, ``gradient_checkpointing=False`` (TRL's default is True; workbench does not checkpoint, so it is
  off for the same work), ``max_length=None`` (no truncation). ``trainer.train()`` with ``max_steps=K``; a
  ``TrainerCallback`` times ``on_step_begin`` -> ``on_step_end``. When a workbench variant precomputes its reference,
  a second trainer with ``precompute_ref_log_probs=True`` is timed too and is that variant's match.

Both sides start from the same weights; the losses of the first warm-up steps are printed and written to the report
(step 1 is log 2 on both sides since policy == reference; step 2 follows one AdamW update on each side).

Timing: ``torch.set_num_threads`` for all sides; ``--warmup`` steps per side first, then ``--repeats`` rounds, each
running K=``--steps`` steps of every side in turn (so load from other jobs hits all alike). Medians of per-step wall
time over all timed steps; ratio = TRL / workbench.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import math
import os
import random
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

DEFAULT_SETTINGS = ["16x32x32", "16x128x64"]
DEFAULT_VARIANTS = ["default", "no_shared_prefix:method.shared_prefix=false", "precomputed:method.reference=precomputed",
                    "no_shared_prefix_precomputed:method.shared_prefix=false,method.reference=precomputed"]
GOAL = 1.2


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_setting(text: str) -> tuple[int, int, int]:
    try:
        b, p, c = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"setting '{text}' is not BxPxC, e.g. 16x32x32") from None
    if b < 1 or p < 2 or c < 2:
        raise argparse.ArgumentTypeError(f"setting '{text}': need B>=1, P>=2, C>=2")
    return b, p, c


# ---- config, data, shared weights ------------------------------------------------------------------------------
def compose(pairs: int, prompt_len: int, completion_len: int, threads: int, extra: list[str] | None = None):
    """The config a CLI run ``method=dpo model=tiny_llama task=synthetic_preference`` composes, at this size."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = [
        "method=dpo", "model=tiny_llama", "task=synthetic_preference",
        f"method.batch_size={pairs}", f"method.max_prompt_length={prompt_len}",
        f"method.max_completion_length={completion_len}",
        "method.judge=null",        # no sampling/judging: validation is off anyway
        "method.warmup_steps=0",    # TRL runs a constant schedule without warm-up here
        "trainer.progress_bar=false", f"trainer.num_threads={threads}", *(extra or []),
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def make_pairs(n: int, prompt_len: int, completion_len: int, seed: int = 0) -> list[dict]:
    """n pairs of digit strings: prompt of U[P/2, P] digits, completions of U[C/2, C] - 1 digits (+ EOS = C/2..C)."""
    rng = random.Random(seed)

    def digits(k: int) -> str:
        return "".join(str(rng.randint(0, 9)) for _ in range(k))

    rows = []
    for _ in range(n):
        p = rng.randint(math.ceil(prompt_len / 2), prompt_len)
        cw, cl = (rng.randint(math.ceil(completion_len / 2), completion_len) - 1 for _ in range(2))
        rows.append({"prompt": digits(p), "chosen": digits(cw), "rejected": digits(cl)})
    return rows


def pairs_task(rows: list[dict]):
    """A Task whose every split is these rows (the module only reads prompt / chosen / rejected)."""
    from datasets import Dataset, DatasetDict

    from workbench.tasks.base import Task

    class BenchPairs(Task):
        name = "bench_pairs"

        def __init__(self):
            data = Dataset.from_list(rows)
            self.splits = DatasetDict(train=data, validation=data, test=data)

    return BenchPairs()


def save_shared_policy(cfg, folder: Path) -> Path:
    """Random-init tiny Llama + task tokenizer, built as workbench builds it, written once for both sides."""
    from workbench.policy import build_policy
    from workbench.tasks import build_task

    policy = build_policy(cfg.model, cfg.paths.cache_dir, corpus=build_task(cfg.task).corpus())
    policy.save(folder)
    return folder


class _Timed:
    """Wraps a model's ``forward`` (instance attribute, as TRL's fused head does) and accumulates its wall time."""

    def __init__(self, model):
        self.seconds = 0.0
        inner = model.forward

        @functools.wraps(inner)
        def forward(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        model.forward = forward


# ---- workbench side -----------------------------------------------------------------------------------------
class WorkbenchSide:
    """One workbench configuration (a variant: its Hydra overrides) with its own copy of the shared weights."""

    kind = "workbench"

    def __init__(self, name: str, cfg, task, weights: Path, workdir: Path):
        import lightning as L

        from workbench.methods import method_class
        from workbench.policy import build_policy

        self.name, self.L, self.cfg, self.workdir = name, L, cfg, workdir
        self.precomputed = cfg.method.get("reference", "live") == "precomputed"
        policy = build_policy(cfg.model, cfg.paths.cache_dir, weights_dir=weights)
        self.module = method_class(cfg.method.module)(policy, task, cfg.method, cfg.trainer)
        self.policy_fwd = _Timed(self.module.model)
        self.ref_fwd = _Timed(self.module.reference._model) if self.module.reference is not None else None
        self.records: list[dict] = []

    def tokens(self, rows: list[dict]) -> list[tuple[list[int], list[int], list[int]]]:
        enc = self.module.encoder
        b = enc.pairs(rows)
        out = []
        for i in range(0, b["prompt_ids"].shape[0], 2):
            def real(ids, mask):
                return ids[mask.bool()].tolist()
            out.append((real(b["prompt_ids"][i], b["prompt_mask"][i]), real(b["completion_ids"][i], b["completion_mask"][i]),
                        real(b["completion_ids"][i + 1], b["completion_mask"][i + 1])))
        return out

    def run(self, steps: int, keep: bool = True) -> list[dict]:
        side, L = self, self.L

        class Timer(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                side.policy_fwd.seconds = 0.0
                if side.ref_fwd:
                    side.ref_fwd.seconds = 0.0
                self.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                dt = time.perf_counter() - self.t0
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                ref = side.ref_fwd.seconds if side.ref_fwd else 0.0
                out.append(dict(step=dt, policy_fwd=side.policy_fwd.seconds, ref=ref,
                                rest=dt - side.policy_fwd.seconds - ref, loss=float(loss),
                                width=batch["prompt_ids"].shape[1] + batch["completion_ids"].shape[1],
                                rows=batch["prompt_ids"].shape[0], threads=torch.get_num_threads()))

        out: list[dict] = []
        trainer = L.Trainer(
            accelerator="cpu", devices=1, precision="32-true", max_steps=steps, max_epochs=-1,
            limit_val_batches=0, num_sanity_val_steps=0, log_every_n_steps=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            gradient_clip_val=self.cfg.method.max_grad_norm, callbacks=[Timer()], default_root_dir=self.workdir,
        )
        trainer.fit(self.module)
        if keep:
            self.records.extend(out)
        return out


# ---- TRL side -------------------------------------------------------------------------------------------------
class TRLSide:
    kind = "TRL"

    def __init__(self, name: str, cfg, rows: list[dict], weights: Path, workdir: Path, precompute: bool = False):
        from datasets import Dataset
        from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
        from trl import DPOConfig, DPOTrainer

        m = cfg.method
        self.name, self.precomputed = name, precompute
        args = DPOConfig(
            output_dir=str(workdir / name.replace(" ", "_")), use_cpu=True, bf16=False, fp16=False, report_to=[],
            save_strategy="no", disable_tqdm=True, seed=int(cfg.seed), dataloader_num_workers=0,
            per_device_train_batch_size=int(m.batch_size), gradient_accumulation_steps=1,
            loss_type=["sigmoid"], beta=float(m.beta), max_length=None, precompute_ref_log_probs=precompute,
            gradient_checkpointing=False,
            learning_rate=float(m.lr), weight_decay=float(m.weight_decay), adam_beta1=float(m.adam_betas[0]),
            adam_beta2=float(m.adam_betas[1]), lr_scheduler_type="constant", warmup_steps=0,
            max_grad_norm=float(m.max_grad_norm), max_steps=1,
        )
        tokenizer = AutoTokenizer.from_pretrained(weights)
        self.trainer = DPOTrainer(model=str(weights), args=args, train_dataset=Dataset.from_list(rows),
                                  processing_class=tokenizer)
        tr = self.trainer
        tr.remove_callback(PrinterCallback)  # the end-of-train summary print (outside the timed window anyway)
        self.policy_fwd = _Timed(tr.model)
        self.ref_fwd = _Timed(tr.ref_model) if tr.ref_model is not None else None  # None: precomputed
        side = self
        self._losses: list[torch.Tensor] = []
        inner = tr.compute_loss

        @functools.wraps(inner)
        def compute_loss(*a, **kw):
            loss = inner(*a, **kw)
            side._losses.append(loss[0] if isinstance(loss, tuple) else loss)
            return loss

        tr.compute_loss = compute_loss

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                side.policy_fwd.seconds = 0.0
                if side.ref_fwd:
                    side.ref_fwd.seconds = 0.0
                side._losses.clear()
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                dt = time.perf_counter() - self.t0
                p, r = side.policy_fwd.seconds, side.ref_fwd.seconds if side.ref_fwd else 0.0
                side._out.append(dict(step=dt, policy_fwd=p, ref=r, rest=dt - p - r,
                                      loss=float(side._losses[-1]) if side._losses else float("nan"),
                                      threads=torch.get_num_threads()))

        self._out: list[dict] = []
        self.records: list[dict] = []
        tr.add_callback(Timer())

    def tokens(self) -> list[tuple[list[int], list[int], list[int]]]:
        d = self.trainer.train_dataset
        return [(list(r["prompt_ids"]), list(r["chosen_ids"]), list(r["rejected_ids"])) for r in d]

    def run(self, steps: int, keep: bool = True) -> list[dict]:
        self._out = []
        self.trainer.args.max_steps = steps
        self.trainer.train()
        if getattr(self.trainer.model, "is_gradient_checkpointing", False):
            raise RuntimeError("TRL's model trains with activation checkpointing; the comparison would be off")
        if keep:
            self.records.extend(self._out)
        return list(self._out)


# ---- one setting ------------------------------------------------------------------------------------------------
KEYS = ("step", "policy_fwd", "ref", "rest")


def median(records: list[dict], key: str) -> float:
    values = [r[key] for r in records if r[key] == r[key]]
    return statistics.median(values) if values else float("nan")


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name' or 'name:key=value,key=value' -> (name, Hydra overrides of the workbench side)."""
    name, _, rest = text.partition(":")
    return name, [o for o in rest.split(",") if o]


def bench_setting(setting: tuple[int, int, int], repeats: int, steps: int, warmup: int, threads: int,
                  overrides: list[str] | None = None, profile: bool = False,
                  variants: list[tuple[str, list[str]]] | None = None) -> dict:
    import lightning as L
    from omegaconf import open_dict

    from workbench.runner import configure_runtime

    B, P, C = setting
    name = f"{B}x{P}x{C}@{threads}t"
    variants = variants or [("default", [])]
    cfg = compose(B, P, C, threads, overrides)
    configure_runtime(cfg)
    for noisy in ("lightning.pytorch", "lightning.fabric", "lightning", "transformers", "trl", "accelerate", "datasets"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    L.seed_everything(int(cfg.seed), verbose=False)
    rows = make_pairs(B, P, C, seed=int(cfg.seed))
    with tempfile.TemporaryDirectory(prefix="dpo-vs-trl-") as tmp:
        tmp = Path(tmp)
        say(f"[{name}] building the shared random-init policy and {B} pairs")
        weights = save_shared_policy(cfg, tmp / "policy")
        sides: list = []
        for variant, extra in variants:
            vcfg = compose(B, P, C, threads, [*(overrides or []), *extra])
            with open_dict(vcfg):
                vcfg.method.reference_cache_dir = str(tmp / "ref_logps")  # precomputed reference: a fresh cache
            sides.append(WorkbenchSide(f"workbench {variant}", vcfg, pairs_task(rows), weights, tmp / variant))
        trl_live = TRLSide("TRL", cfg, rows, weights, tmp)
        sides.append(trl_live)
        trl_precompute = any(side.precomputed for side in sides)  # the match of workbench's precomputed reference
        trl_pre = TRLSide("TRL precomputed ref", cfg, rows, weights, tmp, precompute=True) if trl_precompute else None
        if trl_pre:
            sides.append(trl_pre)
        trl_tokens = trl_live.tokens()
        wb_tokens = sides[0].tokens(rows)
        for side in sides:
            if side.kind == "workbench" and side.tokens(rows) != trl_tokens:
                raise RuntimeError(f"[{name}] {side.name} and TRL tokenize the pairs differently; the comparison is off")
        lengths = dict(prompt=statistics.mean(len(t[0]) for t in wb_tokens),
                       completion=statistics.mean(len(t[1]) + len(t[2]) for t in wb_tokens) / 2,
                       trl_width=max(len(t[0]) + max(len(t[1]), len(t[2])) for t in wb_tokens),
                       wb_width=max(len(t[0]) for t in wb_tokens) + max(max(len(t[1]), len(t[2])) for t in wb_tokens))
        say(f"[{name}] same token ids on all sides; mean prompt {lengths['prompt']:.1f} / completion "
            f"{lengths['completion']:.1f} tokens; padded width workbench {lengths['wb_width']}, TRL {lengths['trl_width']}")
        n_params = sum(p.numel() for p in sides[0].module.model.parameters())
        warm = {}
        for side in sides:
            if warmup:
                say(f"[{name}] warm-up {side.name}: {warmup} step(s)")
                torch.set_num_threads(threads)
                warm[side.name] = [r["loss"] for r in side.run(warmup, keep=False)]
        for i in range(warmup):
            say(f"[{name}] loss at step {i + 1} (same start weights): "
                + "  ".join(f"{k} {v[i]:.7f}" for k, v in warm.items()))
        for r in range(repeats):
            for side in sides:
                torch.set_num_threads(threads)
                recs = side.run(steps)
                say(f"[{name}] repeat {r + 1}/{repeats} {side.name:28s}: " + " ".join(f"{x['step']:.3f}s" for x in recs))
        result = dict(setting=name, pairs=B, prompt=P, completion=C, threads=threads, params=n_params, lengths=lengths,
                      warmup_losses=warm, sides={})
        for side in sides:
            result["sides"][side.name] = dict(kind=side.kind, records=side.records, precomputed=side.precomputed,
                                              median={k: median(side.records, k) for k in KEYS})
        result["comparisons"] = []
        for side in sides:
            if side.kind != "workbench":
                continue
            match = trl_pre if (side.precomputed and trl_pre) else trl_live
            ratio = result["sides"][match.name]["median"]["step"] / result["sides"][side.name]["median"]["step"]
            result["comparisons"].append(dict(workbench=side.name, trl=match.name, ratio=ratio))
            say(f"[{name}] median step: {side.name} {result['sides'][side.name]['median']['step']:.3f}s, "
                f"{match.name} {result['sides'][match.name]['median']['step']:.3f}s, TRL/workbench {ratio:.2f}x")
        if profile:
            result["profile"] = profile_both(sides[0], trl_live, threads, name)
    return result


def profile_both(wb: WorkbenchSide, trl: TRLSide, threads: int, name: str, rows: int = 16) -> dict[str, str]:
    """torch.profiler over one step of each side: the ops where the time goes (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    tables = {}
    for side in (wb, trl):
        say(f"[{name}] torch.profiler: one {side.name} step")
        torch.set_num_threads(threads)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            side.run(1, keep=False)
        tables[side.name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)
    return tables


# ---- report -------------------------------------------------------------------------------------------------------
DIFFERENCES = [
    "* Model passes per step are the same in the `no_shared_prefix` variant: one policy forward over the 2B rows (chosen and "
    "rejected concatenated), one reference forward (no grad), one backward, one clipped AdamW step. No gradient "
    "checkpointing on either side (TRL's default `gradient_checkpointing=True` would re-run the forward in the "
    "backward; it is switched off, and the script checks it stays off). The default (shared prefix) packs each pair into one row "
    "[prompt | chosen | rejected] with a 4-D mask, so the prompt goes through the model once instead of twice; "
    "`precomputed` drops the reference forward (as TRL's `precompute_ref_log_probs=True` does).",
    "* Row layout: workbench left-pads prompts and right-pads completions separately (width = longest prompt + longest "
    "completion), rows interleaved (x1, y_w1), (x1, y_l1), ...; TRL right-pads prompt+completion (width = longest "
    "prompt+completion), batch [chosen; rejected]. With varied lengths workbench's rows can be a little wider.",
    "* LM head: workbench asks the model for `logits_to_keep=C+1` (only completion positions go through the head) and "
    "materialises those fp32 logits for `log_softmax`; TRL's fused chunked head (CPU, non-Triton path) projects "
    "*every* prompt+completion position and computes log-probs, entropy, mean logit and top-1 per token, without "
    "keeping the logits.",
    "* Position ids: workbench passes them from the attention mask (left padding aware); TRL passes none (its rows "
    "have no left padding). Same positions for real tokens.",
    "* Metrics: workbench makes 9 `self.log` calls inside the timed window (no logger attached, but each goes "
    "through Lightning's result collection; 3 more in the module's `on_train_batch_end`, after the window); TRL computes its metrics (entropy, logits, token accuracy, rewards, margins, log-probs) with "
    "~15 `.item()` calls through `accelerate` gathers.",
    "* Loss: identical (sigmoid DPO, same beta) - `tests/test_trl_parity_preference.py` checks loss and gradients "
    "against `DPOTrainer._compute_loss`.",
    "* Optimizer: TRL uses `adamw_torch_fused` (transformers' default), workbench `torch.optim.AdamW` (foreach); "
    "both clip the gradient norm to `max_grad_norm`, constant lr (workbench's warm-up set to 0 here).",
]


def write_report(results: list[dict], out: Path, meta: dict) -> str:
    m = meta["machine"]
    variants = meta["variants"]
    lines = [
        "# One DPO step: workbench vs TRL 1.16 DPOTrainer (CPU)",
        "",
        f"Generated by `bench/dpo_vs_trl.py` on {meta['date']}.",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Machine: {m['cpus']} CPUs ({m['platform']}), Python {m['python']}, torch {m['torch']}, "
        f"transformers {m['transformers']}, TRL {m['trl']}, Lightning {m['lightning']}; "
        f"torch threads {meta['threads']} for all sides (the suffix `@Nt` of a setting).",
        *([f"Overrides for all sides: `{' '.join(meta['overrides'])}`."] if meta.get("overrides") else []),
        f"Load average (1/5/15 min) at start: {meta['load_start']}; at end: {meta['load_end']}.",
        "",
        "Workbench variants (Hydra overrides of the workbench side; each is compared with the TRL side doing the same "
        "reference work: live reference vs `TRL`, precomputed reference vs `TRL precomputed ref`):",
        "",
        *[f"* `{name}`: " + (f"`{' '.join(o)}`" if o else "the `method=dpo` defaults (`reference: live`, "
                                                           "`shared_prefix: true`)") for name, o in variants],
        "",
        "## Settings",
        "",
        "| | workbench | TRL |",
        "|---|---|---|",
        "| policy | tiny_llama (random init, task tokenizer), saved once, loaded from that folder | same folder |",
        "| reference | live: frozen deep copy of the policy, forward every step; precomputed: once before training, cached | live: `from_pretrained` of the same folder, forward every step; precomputed: `precompute_ref_log_probs=True` |",
        "| loop | Lightning `Trainer.fit(max_steps=K)`, `PreferenceModule` | `DPOTrainer.train()` with `max_steps=K` |",
        "| batch | B pairs = 2B rows, one concatenated forward | `per_device_train_batch_size`=B (2B rows), grad. accumulation 1 |",
        "| data | the same B digit-string pairs every step; identical token ids (checked) | same |",
        "| loss | `loss_type: sigmoid`, `method.beta` | `loss_type=[\"sigmoid\"]`, same beta |",
        "| optimizer | AdamW (torch default impl.), lr `method.lr`, grad-norm clip `method.max_grad_norm`, no warm-up | AdamW (`adamw_torch_fused`), same lr / betas / clip, constant |",
        "| precision / device | fp32, CPU | `bf16=False`, `use_cpu=True` |",
        "| gradient checkpointing | none | `gradient_checkpointing=False` (TRL's default is True) |",
        "| logging in the timed window | `self.log` calls, no logger | metric `.item()`s; `report_to=[]`, logs after `on_step_end` |",
        "",
        f"Timing: {meta['warmup']} warm-up step(s) per side, then {meta['repeats']} repeats x {meta['steps']} steps, "
        "all sides in turn per repeat; per-step wall time from the framework's step hooks; medians.",
        "",
        "## Results (median seconds per optimizer step)",
        "",
        "| setting (B x P x C @ threads) | params | mean prompt / completion tokens | padded width wb / TRL | workbench variant | workbench step | TRL step | TRL / workbench | steps timed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ln = r["lengths"]
        for c in r["comparisons"]:
            w, t = r["sides"][c["workbench"]], r["sides"][c["trl"]]
            lines.append(f"| {r['setting']} | {r['params'] / 1e6:.2f}M | {ln['prompt']:.1f} / {ln['completion']:.1f} | "
                         f"{ln['wb_width']} / {ln['trl_width']} | {c['workbench'].removeprefix('workbench ')} | "
                         f"{w['median']['step']:.3f} | {t['median']['step']:.3f} ({c['trl']}) | **{c['ratio']:.2f}x** | "
                         f"{len(w['records'])} / {len(t['records'])} |")
    lines += [
        "",
        "Breakdown (medians, seconds): `policy fwd` = the policy's forward (workbench: backbone + completion-only LM "
        "head; TRL: backbone + fused head over all positions), `ref` = the reference forward (0 when precomputed), "
        "`rest` = backward, clipping, optimizer step, log-prob/loss arithmetic, metrics and loop glue:",
        "",
        "| setting | side | step | policy fwd | ref | rest |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for side_name, v in r["sides"].items():
            md = v["median"]
            lines.append(f"| {r['setting']} | {side_name} | {md['step']:.3f} | {md['policy_fwd']:.3f} | {md['ref']:.3f} | {md['rest']:.3f} |")
    losses = [(r["setting"], r["warmup_losses"]) for r in results if r.get("warmup_losses")]
    if losses:
        names = list(losses[0][1])
        lines += ["", "## Same loss", "",
                  "Loss of the warm-up steps, every side from the same initial weights on the same pairs (step 1: policy "
                  "== reference, so log 2 = 0.6931472; step 2: after one AdamW step on each side):", "",
                  "| setting | step | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for setting, warm in losses:
            for i in range(len(warm[names[0]])):
                lines.append(f"| {setting} | {i + 1} | " + " | ".join(f"{warm[n][i]:.7f}" for n in names) + " |")
    lines += ["", f"## Goal: workbench >= {GOAL}x faster than TRL per DPO step", ""]
    for name, _ in variants:
        ratios = [c["ratio"] for r in results for c in r["comparisons"] if c["workbench"] == f"workbench {name}"]
        met = all(x >= GOAL for x in ratios)
        lines.append(f"* `{name}`: " + (f"**met** in every setting measured (TRL/workbench {', '.join(f'{x:.2f}x' for x in ratios)})."
                                        if met else
                                        f"**not met** (TRL/workbench {', '.join(f'{x:.2f}x' for x in ratios)}; "
                                        f"{sum(x >= GOAL for x in ratios)} of {len(ratios)} settings reach {GOAL}x)."))
    lines += ["", "## What differs between the two loops (read from the code, not measured)", "", *DIFFERENCES]
    return write_report_with_profiles(lines, results, out, meta.get("notes"))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", type=parse_setting, default=[parse_setting(s) for s in DEFAULT_SETTINGS],
                    help="BxPxC: pairs x max prompt tokens x max completion tokens (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds (workbench K steps, TRL K steps)")
    ap.add_argument("--steps", type=int, default=3, help="K: optimizer steps per side per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per side before the rounds (their losses are compared)")
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                    help="torch.set_num_threads for all sides; several values: one full pass each (default 2 1)")
    ap.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides for both sides, e.g. model.hidden_size=32")
    ap.add_argument("--variants", nargs="+", type=parse_variant, default=[parse_variant(v) for v in DEFAULT_VARIANTS],
                    help="workbench variants, each 'name' or 'name:key=value,key=value' (Hydra overrides of the "
                         "workbench side); default: %(default)s")
    ap.add_argument("--profile", action="store_true", help="torch.profiler over one step of each side, into the report")
    ap.add_argument("--notes", type=Path, default=None, help="a text file appended to the report under 'Notes'")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "dpo_vs_trl.md")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads[0])
    meta = dict(date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), machine=machine_info(),
                command="python " + " ".join(["bench/dpo_vs_trl.py", *(argv if argv is not None else sys.argv[1:])]),
                threads=", ".join(map(str, args.threads)), variants=args.variants, overrides=args.override,
                warmup=args.warmup, repeats=args.repeats, steps=args.steps, load_start=loadavg(),
                notes=args.notes.read_text() if args.notes else None)
    say(f"load average at start: {meta['load_start']}; torch threads {meta['threads']}")
    results = [bench_setting(s, args.repeats, args.steps, args.warmup, threads, args.override,
                             args.profile and i == 0, args.variants)
               for threads in args.threads for i, s in enumerate(args.settings)]
    meta["load_end"] = loadavg()
    say(f"load average at end: {meta['load_end']}")
    write_report(results, args.out, meta)
    say(f"wrote {args.out}")
    for r in results:
        for c in r["comparisons"]:
            print(f"  {r['setting']:>14s} {c['workbench']:>34s}: {r['sides'][c['workbench']]['median']['step']:.3f}s  "
                  f"{c['trl']}: {r['sides'][c['trl']]['median']['step']:.3f}s  TRL/workbench {c['ratio']:.2f}x")
    return results


if __name__ == "__main__":
    main()
