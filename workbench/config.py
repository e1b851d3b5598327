"""Config checks that run before anything heavy loads, and helpers on the composed config."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from workbench import ROOT
from workbench.errors import ConfigError

OmegaConf.register_new_resolver("workbench_root", lambda: str(ROOT), replace=True)

SFT_CONFIG = ROOT / "conf" / "method" / "sft.yaml"
REWARD_MODEL_CONFIG = ROOT / "conf" / "method" / "reward_model.yaml"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.safetensors.index.json")
MODEL_DTYPES = ("float32", "bfloat16", "float16")


def has_weights(path: Path) -> bool:
    return any(any(path.glob(p)) for p in WEIGHT_PATTERNS)


def check_local_model(path: str | None, field: str = "model.path") -> Path:
    if not path:
        raise ConfigError(field, "no path given", "set model.path=/folder/with/config.json/and/weights")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(field, f"'{p}' is not a folder", "point it at a folder saved with save_pretrained")
    if not (p / "config.json").is_file():
        raise ConfigError(field, f"'{p}' has no config.json", "point it at a folder saved with save_pretrained")
    if not has_weights(p):
        raise ConfigError(
            field, f"'{p}' has no weights (*.safetensors or pytorch_model*.bin)", "save the model with its weights"
        )
    return p


def _positive(cfg: DictConfig, key: str, hint: str, allow_zero: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value < float("inf") \
            or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}", hint)


SCHEDULERS = ("cosine", "constant")  # workbench/methods/base.py: configure_optimizers
KL_ESTIMATORS = ("k1", "k3")  # workbench/methods/group_rl/losses.py: kl_estimate
LOSS_AGGREGATIONS = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")  # losses.py: aggregate
IMPORTANCE_LEVELS = ("token", "sequence", "sequence_token")  # losses.py: log_importance_ratio
REWARD_AGGREGATIONS = ("weighted_sum", "normalize_then_sum")  # workbench/rewards: RewardSet


def _choice(cfg: DictConfig, key: str, options: tuple[str, ...]) -> None:
    value = OmegaConf.select(cfg, key)
    if value is not None and value not in options:
        raise ConfigError(key, f"unknown '{value}'", f"use one of {list(options)}")


def _check_rewards(specs) -> None:
    """The reward names, checked here so a typo fails before the SFT warm start, not after it."""
    from workbench.rewards import REWARDS

    if not specs:
        raise ConfigError("method.rewards", "empty", "list at least one reward, e.g. [{name: correctness}]")
    for i, spec in enumerate(specs):
        if not isinstance(spec, (dict, DictConfig)):
            raise ConfigError(f"method.rewards[{i}]", f"must be a mapping, got {spec!r}",
                              "write each reward as {name: correctness, weight: 1.0}")
        name = spec.get("name")
        if name not in REWARDS:
            raise ConfigError(f"method.rewards[{i}].name", f"unknown reward '{name}'", f"choose from {sorted(REWARDS)}")
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"method.rewards[{i}].weight", f"must be a number, got {weight!r}", "e.g. weight: 1.0")


def _check_group_rl(cfg: DictConfig) -> None:
    m = cfg.method
    if "group_size" not in m:
        return
    from workbench.methods.group_rl.losses import POLICY_LOSSES
    from workbench.policy.generation import GENERATORS

    _choice(cfg, "method.policy_loss", tuple(POLICY_LOSSES))
    _choice(cfg, "method.importance_level", IMPORTANCE_LEVELS)
    _choice(cfg, "method.reward_aggregation", REWARD_AGGREGATIONS)
    _choice(cfg, "method.generation.backend", tuple(GENERATORS))
    mb = m.get("minibatch_size")
    if mb and isinstance(m.group_size, int) and mb % m.group_size and (m.get("policy_loss") == "disco" or m.get("shared_prefix")):
        raise ConfigError("method.minibatch_size", f"{mb} splits groups of {m.group_size}, which DisCO and the shared-prefix "
                          "forward need whole", f"use a multiple of method.group_size ({m.group_size})")
    if m.get("kl_in_reward") and not (m.get("beta", 0) > 0):
        raise ConfigError("method.kl_in_reward", "is on but method.beta is 0, so there is no KL to fold into the reward",
                          "set method.beta > 0 or method.kl_in_reward=false")
    ds = m.get("dynamic_sampling") or {}
    rounds = ds.get("max_rounds", 0)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ConfigError("method.dynamic_sampling.max_rounds", f"must be a whole number >= 0, got {rounds!r}",
                          "e.g. method.dynamic_sampling.max_rounds=3")
    window = m.get("summary_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 0):
        raise ConfigError("method.summary_window", f"must be a whole number >= 0 or null, got {window!r}",
                          "e.g. method.summary_window=20 (0 or null: no train_early/late/growth metrics)")


def _check_preference(cfg: DictConfig) -> None:
    m = cfg.method
    if m.get("family") != "preference":
        return
    if not cfg.task.get("pairs"):
        raise ConfigError("task", f"'{cfg.task.name}' has no preference pairs, which method '{m.name}' trains on",
                          "add task=synthetic_preference (known oracle) or task=hh_rlhf")
    if "loss_type" in m:
        from workbench.methods.preference.losses import PAIR_LOSSES

        names = [m.loss_type] if isinstance(m.loss_type, str) else list(m.loss_type)
        for name in names:
            if name not in PAIR_LOSSES and name != "kto":
                raise ConfigError("method.loss_type", f"unknown '{name}'", f"use one or a list of {sorted([*PAIR_LOSSES, 'kto'])}")
        if "kto" in names and len(names) > 1:
            raise ConfigError("method.loss_type", "kto works on unpaired examples and cannot be combined with pair losses",
                              "use loss_type: kto alone")
        weights = m.get("loss_weights")
        if weights is not None and len(weights) != len(names):
            raise ConfigError("method.loss_weights", f"{len(weights)} weights for {len(names)} loss types",
                              "give one weight per entry of method.loss_type (or null for 1 each)")
    _positive(cfg, "method.beta", "set method.beta > 0, e.g. 0.1")
    flip = OmegaConf.select(cfg, "task.flip_rate")
    if flip is not None and not (isinstance(flip, (int, float)) and not isinstance(flip, bool) and 0 <= flip < 0.5):
        raise ConfigError("task.flip_rate", f"must be in [0, 0.5), got {flip!r}", "set task.flip_rate=0.2 for 20 % flipped labels")
    smoothing = OmegaConf.select(cfg, "method.loss_params.label_smoothing")
    if smoothing is not None and not (isinstance(smoothing, (int, float)) and 0 <= smoothing < 0.5):
        raise ConfigError("method.loss_params.label_smoothing", f"must be in [0, 0.5), got {smoothing!r}",
                          "set it to the label flip rate you assume, e.g. 0.1")
    _choice(cfg, "method.reference", ("live", "precomputed"))
    _positive(cfg, "method.max_prompt_length", "e.g. method.max_prompt_length=256")
    _positive(cfg, "method.max_completion_length", "e.g. method.max_completion_length=64")
    # ---- online / iterative preference methods: their own fields (workbench/methods/preference/online.py) ----
    if str(m.get("module", "")).startswith("workbench.methods.preference.online."):
        from workbench.methods.preference.online import check_online_fields

        check_online_fields(m)
    # ---- end online preference block ----


# ---- online preference policy gradients (nash_md, p3o, copg, fdpg) and SALSA's reference soup ----------------
def validate_reference_soup(m) -> list[int]:
    """``method.reference_soup: {seeds: [0, 1], shared_init: null}``: SFT runs of these seeds, weight-averaged
    (runner.soup_base)."""
    spec = m.reference_soup
    if not hasattr(spec, "keys") or set(spec) - {"seeds", "shared_init"}:
        raise ConfigError("method.reference_soup", f"must be a mapping of 'seeds' (and 'shared_init'), got {spec!r}",
                          "e.g. method.reference_soup={seeds: [0, 1]}")
    if spec.get("shared_init") not in (None, True, False):
        raise ConfigError("method.reference_soup.shared_init", f"must be true, false or null, got {spec.get('shared_init')!r}",
                          "null: true for models built from scratch (model.source=tiny), false otherwise")
    seeds = spec.get("seeds")
    if seeds is None or isinstance(seeds, str) or not hasattr(seeds, "__len__") or len(seeds) < 2 \
            or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError("method.reference_soup.seeds", f"need two or more distinct integer seeds, got {seeds!r}",
                          "e.g. method.reference_soup.seeds=[0,1]")
    if m.get("init") != "sft":
        raise ConfigError("method.init", f"'{m.get('init')}': a reference soup averages SFT warm starts",
                          "set method.init=sft or drop method.reference_soup")
    return list(seeds)


def _check_online_preference(cfg: DictConfig) -> None:
    m = cfg.method
    if OmegaConf.select(cfg, "method.pg_loss") is not None:
        from workbench.methods.preference.pairwise_pg import validate_pairwise_pg

        validate_pairwise_pg(m)
    if OmegaConf.select(cfg, "method.reference_soup") is not None:
        validate_reference_soup(m)
# ---- end of the preference policy-gradient / soup block --------------------------------------------------------


def _check_pass_k(cfg: DictConfig) -> None:
    ks = OmegaConf.select(cfg, "method.eval.pass_k") or []
    if not ks:
        return
    samples = OmegaConf.select(cfg, "method.eval.num_samples")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError("method.eval.num_samples", f"must be a positive count, got {samples!r}", "e.g. method.eval.num_samples=8")
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= samples]
    if bad:
        raise ConfigError("method.eval.pass_k", f"{bad} outside 1..num_samples={samples}",
                          "use k values <= method.eval.num_samples or raise num_samples")
    _positive(cfg, "method.eval.temperature", "sample pass@k with method.eval.temperature > 0, e.g. 1.0")


def _check_batch_fits(cfg: DictConfig, key: str, batch_size) -> None:
    """A batch larger than the train split gives zero steps (the loader drops the last partial batch)."""
    train_size = OmegaConf.select(cfg, "task.train_size")
    if not isinstance(train_size, int) or not isinstance(batch_size, int):
        return
    if batch_size > train_size:  # the global batch; each DDP process loads its share of the split
        raise ConfigError(key, f"{batch_size} is more than the {train_size} training problems "
                               f"(task.train_size), so no step would run",
                          f"lower {key} or raise task.train_size")


def _check_control(cfg: DictConfig) -> bool:
    """Control methods pair with control tasks (and the reverse); their own fields. True for a control run."""
    control_method = cfg.method.get("family") == "offline_rl"
    control_task = bool(cfg.task.get("control"))
    if control_method and not control_task:
        raise ConfigError("task", f"'{cfg.task.name}' is a language task; method '{cfg.method.name}' trains on a gymnasium "
                                  "environment", "add task=pendulum_expert (or another control task: conf/task/)")
    if control_task and not control_method:
        raise ConfigError("method", f"'{cfg.method.name}' trains a language model; task '{cfg.task.name}' is a control task",
                          "pick an offline/hybrid RL method, e.g. method=td3_bc")
    if not control_method:
        return False
    m = cfg.method
    declared = cfg.task.get("action_space")
    spaces = list(m.get("action_spaces") or ["continuous"])
    if declared not in spaces:
        raise ConfigError("task", f"'{cfg.task.name}' has {declared} actions; {m.name} handles {' and '.join(spaces)} actions",
                          "pick a task with matching actions (conf/task/) or another method")
    for key in ("actor_lr", "critic_lr", "value_lr", "alpha_lr", "batch_size", "max_steps", "val_check_interval", "log_every"):
        _positive(cfg, f"method.{key}", f"set method.{key} to a positive value")
    for key in ("gamma", "tau", "expectile"):
        value = m.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1):
            raise ConfigError(f"method.{key}", f"must be in (0, 1], got {value!r}", f"e.g. method.{key}=0.99" if key == "gamma" else "see the method's config")
    hidden = m.get("hidden")
    if hidden is not None and (isinstance(hidden, (str, int)) or not len(hidden)
                               or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden)):
        raise ConfigError("method.hidden", f"must be a list of layer widths, got {hidden!r}", "e.g. method.hidden=[256,256]")
    _choice(cfg, "method.reward_normalization", ("none", "returns_range"))
    episodes = cfg.task.get("eval_episodes")
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ConfigError("task.eval_episodes", f"must be a positive count, got {episodes!r}", "e.g. task.eval_episodes=10")
    online = m.get("online") or {}
    if online.get("enabled"):
        for key in ("start_step", "random_steps"):
            _positive(cfg, f"method.online.{key}", f"set method.online.{key} >= 0", allow_zero=True)
        _positive(cfg, "method.online.env_steps_per_update", "set method.online.env_steps_per_update >= 1")
        _positive(cfg, "method.online.buffer_size", "set method.online.buffer_size to the transitions kept from online steps",
                  allow_zero=True)  # 0: on-policy methods (HNPG) that do not keep their samples
    elif not (cfg.task.get("dataset") or {}).get("path") and not (cfg.task.get("dataset") or {}).get("kind"):
        raise ConfigError("task.dataset", f"'{cfg.task.name}' has no dataset and {m.name} learns offline",
                          "use a task with a dataset (e.g. task=pendulum_expert) or an online method (sac, dsac_t)")
    if int(cfg.trainer.devices) * int(cfg.trainer.get("num_nodes", 1)) > 1:
        raise ConfigError("trainer.devices", "control methods run in one process (small MLPs, one environment)", "use trainer=cpu or trainer=gpu")
    return True


def is_env_task(cfg: DictConfig) -> bool:
    return str(cfg.task.get("_target_", "")).startswith("workbench.tasks.envs.")


def _check_multi_turn(cfg: DictConfig) -> None:
    """Multi-turn environments need a multi-turn method (SFT trains on their expert turns); the family's fields."""
    m = cfg.method
    family = m.get("family")
    if is_env_task(cfg) and family not in ("multi_turn", "sft"):
        raise ConfigError("method", f"'{m.name}' ({family}) cannot play the multi-turn environment task '{cfg.task.name}'",
                          "use a multi-turn method: method=gigpo, grpo_multi_turn, ppo_gae, poad, ma_rlhf, vineppo, "
                          "archer, pure or dapo_step")
    if family != "multi_turn":
        return
    _positive(cfg, "method.clip_eps", "set method.clip_eps >= 0, e.g. 0.2", allow_zero=True)
    _positive(cfg, "method.critic_lr", "set method.critic_lr > 0, e.g. 5e-4")
    for key in ("gamma", "lam"):
        value = m.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
            raise ConfigError(f"method.{key}", f"must be in [0, 1], got {value!r}", f"e.g. method.{key}=0.95")
    _choice(cfg, "method.mode", ("mean_norm", "mean_std_norm"))
    _choice(cfg, "method.episode_stats", ("steps", "trajectories"))
    _choice(cfg, "method.credit", ("gae", "macro"))
    _choice(cfg, "method.discount_at", ("token", "action"))
    # a method's own fields, checked before the SFT warm start trains (each check lives with its method)
    own = {"workbench.methods.multi_turn.archer.": "validate_archer",
           "workbench.methods.multi_turn.dapo_step.": "validate_dapo_step",
           "workbench.methods.multi_turn.vineppo.": "check_config"}
    for prefix, name in own.items():
        if str(m.get("module", "")).startswith(prefix):
            import importlib

            check = getattr(importlib.import_module(prefix.rstrip(".")), name)
            check(m) if name == "check_config" else check(m, cfg.trainer)
    omega = m.get("omega")
    if omega is not None and (isinstance(omega, bool) or not isinstance(omega, (int, float))):
        raise ConfigError("method.omega", f"must be a number, got {omega!r}", "e.g. method.omega=1.0 (0 = multi-turn GRPO)")


def _check_self_correction(cfg: DictConfig) -> None:
    """Self-correction methods play single-turn verifiable tasks through the two-attempt protocol."""
    m = cfg.method
    if m.get("family") != "self_correction":
        return
    if is_env_task(cfg) or cfg.task.get("pairs") or str(cfg.task.get("_target_", "")).startswith("workbench.tasks.hh_rlhf"):
        raise ConfigError("task", f"'{cfg.task.name}' is not a single-turn task with a verifier, which method '{m.name}' "
                          "plays twice (attempt, then correction)", "use task=arithmetic, countdown, gsm8k, svamp or math500")
    from workbench.methods.self_correction.protocol import Protocol, WarmStart

    Protocol.from_config(m.get("protocol"))
    WarmStart.from_config((m.get("base") or {}).get("two_attempt"))
    own = {"workbench.methods.self_correction.score.": "validate_score",
           "workbench.methods.self_correction.correction_sft.": "validate_correction_sft",
           "workbench.methods.self_correction.critique_grpo.": "validate_critique_grpo",
           "workbench.methods.self_correction.critique_rl.": "validate_critique_rl"}
    for prefix, name in own.items():
        if str(m.get("module", "")).startswith(prefix):
            import importlib

            getattr(importlib.import_module(prefix.rstrip(".")), name)(m)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first nonsense value and its fix."""
    m = cfg.method
    if _check_control(cfg):
        return
    _positive(cfg, "method.lr", "use a small positive learning rate, e.g. method.lr=1e-4")
    _positive(cfg, "method.batch_size", "set method.batch_size to a positive count")
    _positive(cfg, "method.max_new_tokens", "set method.max_new_tokens to a positive count")
    _positive(cfg, "method.eval.max_new_tokens", "set method.eval.max_new_tokens to a positive count")
    _positive(cfg, "method.eval.batch_size", "set method.eval.batch_size to a positive count")
    _positive(cfg, "method.inner_iterations", "set method.inner_iterations >= 1")
    _positive(cfg, "method.temperature", "sample with method.temperature > 0 (greedy is for evaluation)")
    _positive(cfg, "method.beta", "set method.beta >= 0", allow_zero=True)
    _positive(cfg, "method.weight_decay", "set method.weight_decay >= 0", allow_zero=True)
    _positive(cfg, "method.warmup_steps", "set method.warmup_steps >= 0", allow_zero=True)
    _positive(cfg, "trainer.max_steps", "set trainer.max_steps to a positive number of optimizer steps")
    _positive(cfg, "trainer.val_check_interval", "set trainer.val_check_interval to a positive number of steps")
    if "group_size" in m and (not isinstance(m.group_size, int) or m.group_size < 2):
        raise ConfigError("method.group_size", f"must be >= 2 (a group needs a baseline), got {m.group_size!r}", "set method.group_size=2 or more")
    betas = OmegaConf.select(cfg, "method.adam_betas")
    if betas is not None and (len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise ConfigError("method.adam_betas", f"need two numbers in [0, 1), got {list(betas)}", "e.g. method.adam_betas=[0.9,0.999]")
    _positive(cfg, "method.minibatch_size", "set method.minibatch_size to a positive count, or null for all at once")
    _positive(cfg, "method.clip_eps_low", "set method.clip_eps_low >= 0, e.g. 0.2", allow_zero=True)
    _positive(cfg, "method.clip_eps_high", "set method.clip_eps_high >= 0, e.g. 0.2", allow_zero=True)
    _positive(cfg, "method.max_grad_norm", "set method.max_grad_norm >= 0 (0 or null disables clipping)", allow_zero=True)
    top_p = OmegaConf.select(cfg, "method.top_p")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ConfigError("method.top_p", f"must be in (0, 1], got {top_p}", "set method.top_p=1.0 to disable nucleus sampling")
    if m.get("init", "scratch") not in ("scratch", "sft"):
        raise ConfigError("method.init", f"unknown '{m.init}'", "use scratch or sft")
    _choice(cfg, "method.scheduler", SCHEDULERS)
    _choice(cfg, "method.kl_estimator", KL_ESTIMATORS)
    _choice(cfg, "method.loss_agg", LOSS_AGGREGATIONS)
    if OmegaConf.select(cfg, "method.advantage") is not None:
        from workbench.methods.group_rl.advantages import ADVANTAGES

        _choice(cfg, "method.advantage", tuple(ADVANTAGES))
    if "rewards" in m:
        _check_rewards(m.rewards)
    _check_group_rl(cfg)
    if OmegaConf.select(cfg, "method.budgets") is not None:  # BRPO's own fields, before the SFT warm start
        from workbench.methods.group_rl.brpo import validate_brpo

        validate_brpo(m)
    if str(m.get("module", "")).startswith("workbench.methods.group_rl.reverse_curriculum."):  # R3's own fields
        from workbench.methods.group_rl.reverse_curriculum import validate_r3

        validate_r3(m)
    _check_preference(cfg)
    _check_online_preference(cfg)
    _check_multi_turn(cfg)
    _check_self_correction(cfg)
    _check_pass_k(cfg)
    _check_batch_fits(cfg, "method.batch_size", OmegaConf.select(cfg, "method.batch_size"))
    if m.get("init") == "sft":  # the SFT warm start trains first: its settings are checked now, not after it
        base = base_config(cfg).method
        for key in ("lr", "batch_size", "max_steps", "val_check_interval"):
            value = base.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise ConfigError(f"method.base.{key}", f"must be > 0, got {value!r}",
                                  f"set method.base.{key} (the SFT warm start's {key}) to a positive value")
        if base.get("scheduler") not in SCHEDULERS:
            raise ConfigError("method.base.scheduler", f"unknown '{base.get('scheduler')}'", f"use one of {list(SCHEDULERS)}")
        _check_batch_fits(cfg, "method.base.batch_size", base.batch_size)
    if cfg.model.source not in ("tiny", "local", "gguf"):
        raise ConfigError("model.source", f"unknown '{cfg.model.source}'", "use tiny, local or gguf")
    _choice(cfg, "model.dtype", MODEL_DTYPES)
    if cfg.model.source == "local":
        check_local_model(cfg.model.path)
    devices = int(cfg.trainer.devices) * int(cfg.trainer.get("num_nodes", 1))
    if devices > 1 and m.batch_size % devices:
        raise ConfigError("method.batch_size", f"{m.batch_size} does not split over {devices} processes",
                          f"use a multiple of {devices} (it is the global batch)")
    if int(cfg.trainer.devices) > 1 and m.get("family") == "group_rl" and int(m.get("inner_iterations", 1)) > 1:
        raise ConfigError("method.inner_iterations", "several updates per rollout are not supported under DDP yet", "use method.inner_iterations=1 with trainer=ddp_cpu")


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def _drop_claim_tags(raw: dict) -> None:
    """A stage run before the main one (SFT base, reward model) is shared by every claim arm: it carries no claim tags."""
    tags = (raw.get("logger") or {}).get("tags") or {}
    for key in [k for k in tags if str(k).startswith("claim")]:
        tags.pop(key)


def base_config(cfg: DictConfig) -> DictConfig:
    """The config of the SFT warm start a method asks for: conf/method/sft.yaml + method.base overrides."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    sft = OmegaConf.merge(OmegaConf.load(SFT_CONFIG), cfg.method.get("base") or {})
    sft.init = "scratch"
    if cfg.method.get("protocol") is not None:  # self-correction: the warm start teaches this protocol's format
        sft.protocol = cfg.method.protocol
    raw["method"] = OmegaConf.to_container(sft, resolve=False)
    raw["resume"] = None
    raw.pop("optuna", None)  # a sweep trial's warm start is shared by every trial: no pruning, no trial tags
    _drop_claim_tags(raw)
    raw["run_name"] = f"sft_base-{cfg.task.name}-{cfg.model.name}-s{cfg.seed}"
    base = OmegaConf.create(raw)
    # the warm start is bounded by method.base.*, never by the trainer overrides of the method on top
    base.trainer.max_steps = "${method.max_steps}"
    base.trainer.val_check_interval = "${method.val_check_interval}"
    base.trainer.devices = 1  # the warm start runs in the launching process, before any DDP workers start
    base.trainer.strategy = "auto"
    base.trainer.num_nodes = 1
    if base.model.get("lora"):
        base.model.lora.r = 0  # the base is a full fine-tune; adapters belong to the method on top
    return base


def reward_model_config(cfg: DictConfig, train) -> DictConfig:
    """The config of a reward model a reward entry asks the run to train first ({name: reward_model, train: {...}}):
    conf/method/reward_model.yaml + the entry's ``train`` overrides, on this run's task, model and seed. Like the SFT
    base it runs in the launching process, bounded by its own max_steps; ``method.save_dir`` is set by the caller."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    rm = OmegaConf.merge(OmegaConf.load(REWARD_MODEL_CONFIG), train or {})
    raw["method"] = OmegaConf.to_container(rm, resolve=False)
    raw["resume"] = None
    raw.pop("optuna", None)
    _drop_claim_tags(raw)
    raw["run_name"] = f"reward_model-{cfg.task.name}-{cfg.model.name}-s{cfg.seed}"
    out = OmegaConf.create(raw)
    out.trainer.max_steps = "${method.max_steps}"
    out.trainer.val_check_interval = "${method.val_check_interval}"
    out.trainer.devices, out.trainer.strategy, out.trainer.num_nodes = 1, "auto", 1
    if out.model.get("lora"):
        out.model.lora.r = 0  # the reward model trains its full backbone
    return out


def cache_key(base: DictConfig) -> str:
    """Hash of what determines the SFT base's weights (not where it is logged or how many threads ran it)."""
    resolved = OmegaConf.to_container(base, resolve=True)
    keyed = {
        "model": resolved["model"],
        "task": resolved["task"],
        "method": resolved["method"],
        "seed": resolved["seed"],
        "precision": resolved["trainer"]["precision"],
        "max_steps": resolved["trainer"]["max_steps"],
    }
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def repo_relative(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
