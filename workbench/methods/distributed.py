"""Reductions over the data-parallel ranks, so a DDP step computes the loss of the global batch.

DDP averages gradients over the W ranks. A loss that is a plain mean over an equal number of rows per rank is
then already the global mean; one normalised by something that varies between ranks (a token count, the
rows left after filtering) is not: the average of per-rank token means weights a short rank's tokens more.
Such a loss divides its rank's partial sum by :func:`rank_share` of the normaliser, the global count / W (as
verl does), so DDP's average of the rank gradients is the gradient of sum / global count. Batch statistics
(a whitening mean and variance, a std over the batch) take their sums through :func:`global_sum`.

Without an initialised process group (one process, tests, evaluation) every function returns its input, so
the single-process numbers are exactly those of a plain local reduction. Every rank must call a reduction
the same number of times in the same order (a collective); callers keep them out of rank-dependent branches.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce(x, op):
    """A tensor in, a detached tensor out; a Python number in, a float out (reduced in float64)."""
    # no grad: only counts and statistics cross ranks; each rank's graph stays local and DDP syncs the gradients
    if not torch.is_tensor(x):
        out = torch.tensor(float(x), dtype=torch.float64)
        dist.all_reduce(out, op=op)
        return float(out)
    out = x.detach().clone()
    if not out.is_floating_point():
        out = out.to(torch.float64)  # int counts: no overflow, and a float to divide by
    dist.all_reduce(out, op=op)
    return out


def global_sum(x):
    """x summed over the ranks (detached); x itself in one process."""
    return x if world_size() == 1 else _all_reduce(x, dist.ReduceOp.SUM)


def global_max(x):
    """The largest x over the ranks (detached); x itself in one process."""
    return x if world_size() == 1 else _all_reduce(x, dist.ReduceOp.MAX)


def global_mean(x):
    """x averaged over the ranks (detached): what a rank logs for a loss scaled with :func:`rank_share`."""
    w = world_size()
    return x if w == 1 else _all_reduce(x, dist.ReduceOp.SUM) / w


def rank_share(count):
    """The normaliser one rank divides its partial sum by: the count summed over ranks / W; ``count`` itself
    in one process. With it, DDP's gradient average equals the gradient of (global sum) / (global count)."""
    w = world_size()
    return count if w == 1 else _all_reduce(count, dist.ReduceOp.SUM) / w
