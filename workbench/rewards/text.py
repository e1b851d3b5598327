"""Reference-based text rewards."""

from __future__ import annotations

from workbench.rewards.base import RewardParamError, check_choice, register_reward

SMOOTH_METHODS = ("add-k", "exp", "floor", "none")


def _references(row_refs) -> list[str]:
    refs = [row_refs] if isinstance(row_refs, str) else [str(r) for r in row_refs]
    return [r for r in refs if r.strip()]


@register_reward("bleu")
def bleu(task, reference_field: str | None = None, smooth_method: str = "add-k"):
    """BLEUBERI reward (Chang et al. 2025; official ``lilakk/BLEUBERI`` training/utils.py ``bleu_reward``):
    smoothed sentence BLEU of the completion against one or several references, in [0, 1].

        r = sacrebleu.sentence_bleu(completion, refs, smooth_method).score / 100;   empty completion -> 0

    References come from the task field ``reference_field``; by default ``references`` (a list per
    row, or one string) when the caller passes it, else ``target``. BLEUBERI uses HF ``evaluate``
    bleu with ``smooth=True`` (Lin & Och add-one smoothing); sacrebleu's ``add-k`` (k=1) is the
    closest equivalent, with sacrebleu's standard 13a tokenization.
    """
    smooth_method = check_choice("smooth_method", smooth_method, SMOOTH_METHODS)
    if reference_field is not None and not isinstance(reference_field, str):
        raise RewardParamError("reference_field", f"must be a task field name, got {reference_field!r}",
                               "e.g. reference_field: references")
    from sacrebleu.metrics import BLEU

    # effective_order: sentence BLEU of a short text would otherwise be 0 for want of 4-grams
    scorer = BLEU(smooth_method=smooth_method, effective_order=True)

    def fn(prompts, completions, **fields):
        field = reference_field or ("references" if "references" in fields else "target")
        if field not in fields:
            raise KeyError(f"bleu reward needs the task field '{field}' (references) but got {sorted(fields)}")
        out = []
        for completion, row_refs in zip(completions, fields[field], strict=True):
            refs = _references(row_refs)
            if not completion.strip() or not refs:
                out.append(0.0)
                continue
            out.append(scorer.sentence_score(completion, refs).score / 100.0)
        return out

    return fn
