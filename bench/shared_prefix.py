"""Naive vs shared-prefix forward+backward time for one prompt group; writes reports/shared_prefix.md.

    python bench/shared_prefix.py                  # full grid at 2 then 1 threads, 1 warm-up + 5 timed repeats
    python bench/shared_prefix.py --repeats 1 --groups 4 --prompts 256 --threads 2   # quick smoke run

The naive path is ``token_logprobs`` on the G-row batch with the prompt repeated; the shared path is
``shared_prefix_token_logprobs`` on the same batch. Repeats alternate naive/shared so that load from other
jobs on the machine hits both alike; the report gives medians and their ratio. The 1-thread pass is there
because on an oversubscribed 2-core machine every 2-thread op waits for its second thread to be scheduled,
a fixed cost per op that both paths pay equally and that hides the work saved.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.policy.logprobs import token_logprobs  # noqa: E402
from workbench.measure.shared_prefix import make_batch  # noqa: E402
from workbench.policy.shared_prefix import shared_prefix_token_logprobs  # noqa: E402

MODEL = dict(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=8, max_position_embeddings=4096)


def step_time(model, batch, fn, **kw) -> float:
    weights = torch.ones_like(batch[3], dtype=torch.float32)
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    lp, _ = fn(model, *batch, **kw)
    (lp * weights).sum().backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--prompts", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--out", default=str(ROOT / "reports" / "shared_prefix.md"))
    args = ap.parse_args()

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**MODEL, attn_implementation=args.attn)).float().train()
    n_params = sum(p.numel() for p in model.parameters())

    load_start = os.getloadavg()
    rows = []
    for threads, P, G in [(th, P, G) for th in args.threads for P in args.prompts for G in args.groups]:
        torch.set_num_threads(threads)
        batch = make_batch(G, P, args.completion, MODEL["vocab_size"], seed=0)
        naive, shared = [], []
        for i in range(args.repeats + 1):  # first pair is warm-up
            tn = step_time(model, batch, token_logprobs)
            ts = step_time(model, batch, shared_prefix_token_logprobs, group_size=G)
            if i > 0:
                naive.append(tn)
                shared.append(ts)
        mn, ms = statistics.median(naive), statistics.median(shared)
        rows.append((threads, G, P, args.completion, mn, ms, mn / ms))
        print(f"threads={threads} G={G:3d} prompt={P:5d} completion={args.completion}: naive {mn:.3f}s  "
              f"shared {ms:.3f}s  speedup {mn / ms:.2f}x", flush=True)

    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    verdicts = [f"- {r[0]} thread(s): the target (>= 5x at G=16, prompt 1024) is "
                f"{'met' if r[6] >= 5 else 'NOT met'}, measured {r[6]:.2f}x."
                for r in rows if r[1] == 16 and r[2] == 1024] or ["- the target configuration (G=16, prompt 1024) "
                                                                   "was not part of this run."]
    lines = [
        "# Shared-prefix (Prefix Grouper) log-probs: naive vs shared forward+backward",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- machine: {os.cpu_count()} CPUs visible, torch {torch.__version__}, CPU shared with other jobs (load "
        f"average {load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; hence interleaved repeats: "
        f"compare ratios, not absolute times)",
        f"- command: `{command}`",
        f"- model: LlamaForCausalLM, fp32, attn_implementation={args.attn}, {n_params / 1e6:.2f}M parameters, "
        f"config {MODEL}",
        f"- one prompt group per measurement (batch = G rows, prompt unpadded, completions right-padded to "
        f"{args.completion} with lengths in [{args.completion // 2}, {args.completion}]); time = "
        f"log-prob forward + backward of sum(logprobs); median of {args.repeats} repeats after 1 warm-up, "
        f"naive and shared alternating",
        "",
        "| threads | G | prompt | completion | naive median (s) | shared median (s) | speedup |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *[f"| {th} | {G} | {P} | {T} | {mn:.3f} | {ms:.3f} | {sp:.2f}x |" for th, G, P, T, mn, ms, sp in rows],
        "",
        *verdicts,
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
