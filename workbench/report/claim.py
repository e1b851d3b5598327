"""A paper claim as an experiment grid: conf/experiment/claims/<name>.yaml.

The file is an ordinary experiment (``python -m workbench.train experiment=claims/<name>`` runs its shared settings)
with a ``claim:`` block that the runs themselves ignore: the arms (override lists), the seeds, the metrics reported
per arm, the checks the verdict is computed from (workbench/report/verdict.py), the paper's numbers, and the
overrides of the CI micro version. Every field is checked here, so a bad file fails in a second, naming the field.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from workbench import ROOT
from workbench.errors import ConfigError
from workbench.report.verdict import DIRECTIONS

CONF_DIR = ROOT / "conf"
CLAIMS_DIR = CONF_DIR / "experiment" / "claims"
# what changes where a run writes or how fast it goes, not what it computes: left out of a run's identity
NOT_IDENTITY_KEYS = ("paths", "logger", "hydra", "resume", "run_name", "claim", "optuna")
NOT_IDENTITY_TRAINER = ("num_threads", "progress_bar", "enable_checkpointing")


@dataclass(frozen=True)
class Arm:
    id: str
    label: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Check:
    name: str
    metric: str
    arm: str
    other: str | float  # an arm id, or a constant the arm's metric is compared with
    direction: str
    min_effect: float = 0.0
    margin: float = 0.0


@dataclass(frozen=True)
class Claim:
    name: str
    title: str
    paper: str
    paper_claim: str
    setting: str
    seeds: tuple[int, ...]
    arms: tuple[Arm, ...]
    metrics: dict[str, str]
    checks: tuple[Check, ...]
    curves: dict[str, str] = field(default_factory=dict)
    paper_numbers: dict | None = None
    micro: tuple[str, ...] = ()
    micro_seeds: tuple[int, ...] = (0, 1)
    number: int | None = None  # its place in the list of claims (issue 9's numbering): the index's order
    entry: str = "workbench.train"  # the module each job runs (a measurement logs a run like a training run does)

    def arm(self, arm_id: str) -> Arm:
        return next(a for a in self.arms if a.id == arm_id)


def available() -> list[str]:
    return sorted(p.stem for p in CLAIMS_DIR.glob("*.yaml"))


def compose_run(name: str, overrides: list[str]) -> DictConfig:
    """The config ``python -m workbench.train experiment=claims/<name> <overrides>`` would run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment=claims/{name}", *overrides])


def load(name: str) -> Claim:
    if name not in available():
        raise ConfigError("claim", f"no claim named '{name}'", f"pick one of {', '.join(available())} (conf/experiment/claims/)")
    spec = compose_run(name, []).get("claim")
    if spec is None:
        raise ConfigError(f"claims/{name}.yaml", "has no 'claim:' block", "add one (see conf/experiment/claims/README.md)")
    return parse(name, OmegaConf.to_container(spec, resolve=True))


def _field(spec: dict, key: str, kind, where: str):
    value = spec.get(key)
    if not isinstance(value, kind) or (isinstance(value, (str, list, dict)) and not value):
        raise ConfigError(f"{where}.{key}", f"missing or not a non-empty {getattr(kind, '__name__', kind)}: {value!r}",
                          "see conf/experiment/claims/README.md for the fields")
    return value


def parse(name: str, spec: dict) -> Claim:
    where = f"claims/{name}.yaml: claim"
    seeds = _field(spec, "seeds", list, where)
    if any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}.seeds", f"need distinct integers, got {seeds}", "e.g. seeds: [0, 1, 2]")
    arms = []
    for i, raw in enumerate(_field(spec, "arms", list, where)):
        at = f"{where}.arms[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(at, f"must be a mapping with id, label, overrides, got {raw!r}", "e.g. {id: dpo, label: DPO, overrides: [method=dpo]}")
        overrides = raw.get("overrides", [])
        if not isinstance(overrides, list) or any(not isinstance(o, str) or "=" not in o for o in overrides):
            raise ConfigError(f"{at}.overrides", f"must be a list of key=value overrides, got {overrides!r}", "e.g. [method=dpo, method.beta=0.1]")
        arms.append(Arm(_field(raw, "id", str, at), str(raw.get("label") or raw["id"]), tuple(overrides)))
    ids = [a.id for a in arms]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{where}.arms", f"arm ids repeat: {ids}", "give every arm its own id")
    metrics = _field(spec, "metrics", dict, where)
    checks = []
    for i, raw in enumerate(_field(spec, "checks", list, where)):
        at = f"{where}.checks[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(at, f"must be a mapping, got {raw!r}", "e.g. {name: ..., metric: ..., arm: a, other: b, direction: higher}")
        check = Check(name=_field(raw, "name", str, at), metric=_field(raw, "metric", str, at), arm=_field(raw, "arm", str, at),
                      other=raw.get("other"), direction=raw.get("direction"), min_effect=float(raw.get("min_effect", 0.0)),
                      margin=float(raw.get("margin", 0.0)))
        if check.direction not in DIRECTIONS:
            raise ConfigError(f"{at}.direction", f"'{check.direction}' is not one of {DIRECTIONS}", "higher | lower | equal")
        for key, ref in (("arm", check.arm), ("other", check.other)):
            if isinstance(ref, (int, float)) and not isinstance(ref, bool) and key == "other":
                continue
            if ref not in ids:
                raise ConfigError(f"{at}.{key}", f"'{ref}' is not an arm of this claim", f"one of {ids}" + (" or a number" if key == "other" else ""))
        if check.direction == "equal" and not check.margin > 0:
            raise ConfigError(f"{at}.margin", "an 'equal' check needs a margin > 0", "e.g. margin: 0.02")
        if check.min_effect < 0 or math.isnan(check.min_effect):
            raise ConfigError(f"{at}.min_effect", f"must be >= 0, got {check.min_effect}", "the smallest difference the claim means")
        checks.append(check)
    micro = spec.get("micro", [])
    if not isinstance(micro, list) or any(not isinstance(o, str) or "=" not in o for o in micro):
        raise ConfigError(f"{where}.micro", f"must be a list of key=value overrides, got {micro!r}", "e.g. [method.max_steps=4]")
    micro_seeds = spec.get("micro_seeds", [0, 1])
    entry = spec.get("entry", "workbench.train")
    if not isinstance(entry, str) or not entry.startswith("workbench."):
        raise ConfigError(f"{where}.entry", f"must be a workbench module, got {entry!r}", "e.g. entry: workbench.measure.shared_prefix")
    number = spec.get("number")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
        raise ConfigError(f"{where}.number", f"must be a whole number, got {number!r}", "e.g. number: 3")
    return Claim(name=name, number=number, title=_field(spec, "title", str, where), paper=_field(spec, "paper", str, where),
                 paper_claim=_field(spec, "paper_claim", str, where), setting=_field(spec, "setting", str, where),
                 seeds=tuple(seeds), arms=tuple(arms), metrics={str(k): str(v) for k, v in metrics.items()},
                 checks=tuple(checks), curves={str(k): str(v) for k, v in (spec.get("curves") or {}).items()},
                 paper_numbers=spec.get("paper_numbers"), micro=tuple(micro), micro_seeds=tuple(micro_seeds), entry=entry)


def run_identity(cfg: DictConfig, arm: str = "") -> str:
    """A hash of the arm and what its run computes (the resolved config but for NOT_IDENTITY_*): a finished run with
    it is reused. The arm is part of it so that two arms whose configs coincide (in a micro version) stay apart."""
    parts = {key: OmegaConf.to_container(cfg[key], resolve=True) if isinstance(cfg[key], DictConfig) else cfg[key]
             for key in cfg if key not in NOT_IDENTITY_KEYS}
    for key in NOT_IDENTITY_TRAINER:
        parts.get("trainer", {}).pop(key, None)
    parts["claim_arm"] = arm
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
