"""SCoRe's self-correction metrics (Kumar et al. 2024, Section 3), every one a fraction of all problems:

    Accuracy@t1       share of problems whose first attempt is correct
    Accuracy@t2       share whose second attempt is correct
    Δ(t1, t2)         Accuracy@t2 − Accuracy@t1
    Δ^{i→c}(t1, t2)   share incorrect at t1 and correct at t2 (mistakes fixed)
    Δ^{c→i}(t1, t2)   share correct at t1 and incorrect at t2 (correct answers broken)

so Δ = Δ^{i→c} − Δ^{c→i}. ``edit_frac`` (share of second attempts whose answer differs from the first) shows the
"make no edits" collapse that SCoRe's stage I is there to prevent.
"""

from __future__ import annotations

import torch


def self_correction_metrics(first_correct, second_correct, edited=None) -> dict[str, float]:
    c1 = torch.as_tensor(first_correct, dtype=torch.bool).flatten()
    c2 = torch.as_tensor(second_correct, dtype=torch.bool).flatten()
    if c1.shape != c2.shape or c1.numel() == 0:
        raise ValueError(f"need one verdict per attempt for the same non-empty problems, got {tuple(c1.shape)} and {tuple(c2.shape)}")
    n = c1.numel()
    out = {
        "accuracy_t1": c1.sum().item() / n,
        "accuracy_t2": c2.sum().item() / n,
        "delta": (c2.sum() - c1.sum()).item() / n,
        "delta_i_to_c": (~c1 & c2).sum().item() / n,
        "delta_c_to_i": (c1 & ~c2).sum().item() / n,
    }
    if edited is not None:
        out["edit_frac"] = torch.as_tensor(edited, dtype=torch.bool).float().mean().item()
    return out
