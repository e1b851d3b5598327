"""Prefix Grouper's two claims on one prompt group, logged as an MLflow run (a claim arm's `entry`):

    python -m workbench.measure.shared_prefix experiment=claims/prefix_grouper measure.group_size=16 measure.prompt_length=1024

1. Same gradients: sum(log-probs) of a G-row group through ``token_logprobs`` (the prompt repeated G times) and
   through ``shared_prefix_token_logprobs`` (the prompt encoded once) give the same log-probs and parameter gradients
   (logged: max absolute differences, and the gradient difference relative to the largest gradient).
2. Speed: forward + backward time of each path, ``measure.repeats`` timed repeats after one warm-up, the two paths
   alternating so that other load on the machine hits both alike; logged: medians and their ratio (the speedup).
The seed draws the model's weights and the token batch.
"""

from __future__ import annotations

import statistics
import sys
import time

import hydra
from omegaconf import DictConfig, open_dict

from workbench.errors import ConfigError


def make_batch(G: int, P: int, T: int, vocab: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(1, vocab, (1, P), generator=g).repeat_interleave(G, 0)
    prompt_mask = torch.ones(G, P, dtype=torch.long)
    completion_ids = torch.randint(1, vocab, (G, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (G,), generator=g)
    lengths[0] = T
    completion_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return prompt_ids, prompt_mask, completion_ids.masked_fill(completion_mask == 0, 0), completion_mask


def forward_backward(model, batch, fn, **kw):
    import torch

    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    logprobs, _ = fn(model, *batch, **kw)
    logprobs.sum().backward()
    seconds = time.perf_counter() - started
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return seconds, logprobs.detach(), grads


def measure(m: DictConfig, seed: int) -> dict[str, float]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.policy.logprobs import token_logprobs
    from workbench.policy.shared_prefix import shared_prefix_token_logprobs

    for key in ("group_size", "prompt_length", "completion_length", "repeats"):
        if isinstance(m.get(key), bool) or not isinstance(m.get(key), int) or m.get(key) < 1:
            raise ConfigError(f"measure.{key}", f"must be a positive whole number, got {m.get(key)!r}", f"e.g. measure.{key}=8")
    torch.manual_seed(seed)
    config = LlamaConfig(**m.model, attn_implementation=m.attn_implementation)
    model = LlamaForCausalLM(config).float().train()
    batch = make_batch(m.group_size, m.prompt_length, m.completion_length, config.vocab_size, seed)
    naive_times, shared_times = [], []
    for i in range(m.repeats + 1):  # the first pair warms up
        tn, lp_naive, g_naive = forward_backward(model, batch, token_logprobs)
        ts, lp_shared, g_shared = forward_backward(model, batch, shared_prefix_token_logprobs, group_size=m.group_size)
        if i > 0:
            naive_times.append(tn)
            shared_times.append(ts)
    naive, shared = statistics.median(naive_times), statistics.median(shared_times)
    grad_diff = (g_naive - g_shared).abs().max().item()
    return {"measure/naive_s": naive, "measure/shared_s": shared, "measure/speedup": naive / shared,
            "measure/logprob_max_abs_diff": (lp_naive - lp_shared).abs().max().item(),
            "measure/grad_max_abs_diff": grad_diff, "measure/grad_max_rel_diff": grad_diff / g_naive.abs().max().item(),
            "measure/parameters": float(sum(p.numel() for p in model.parameters()))}


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    import torch

    from workbench.runner import make_logger, record_config

    with open_dict(cfg):
        cfg.pop("claim", None)
    if cfg.get("measure") is None:
        print("workbench: error: measure: missing -> use experiment=claims/prefix_grouper (it defines the measure block)", file=sys.stderr)
        sys.exit(2)
    if cfg.trainer.get("num_threads"):
        torch.set_num_threads(int(cfg.trainer.num_threads))
    started = time.time()
    try:
        metrics = measure(cfg.measure, int(cfg.seed))
    except ConfigError as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    metrics["run/wall_time_s"] = time.time() - started
    metrics["measure/threads"] = float(torch.get_num_threads())
    logger = make_logger(cfg, extra_tags={"workbench.stage": "main", "workbench.entry": "measure.shared_prefix"})
    record_config(logger, cfg)
    logger.log_metrics(metrics, step=0)
    logger.close("FINISHED")
    print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
    main()
