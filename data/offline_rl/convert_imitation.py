"""One-off conversion of ../shared/data/offline_rl_imitation_rollouts/*.npz (imitation's expert rollouts, MIT)
into workbench dataset folders: data.parquet with the D4RL columns + meta.json with the reference returns.

    python data/offline_rl/convert_imitation.py /path/to/offline_rl_imitation_rollouts

ref_max_score is the dataset's own mean episode return (the expert that produced it); ref_min_score is the mean
return of a uniform random policy over 100 episodes (env seeds 0..99, action-space seed 0), measured here.
"""

import hashlib
import sys
from pathlib import Path

import numpy as np

from workbench.tasks.control.datasets import check_transitions, save_transitions
from workbench.tasks.control.envs import env_spec, make_env

ENVS = {"pendulum_expert": "Pendulum-v1", "cartpole_expert": "CartPole-v1"}


def random_return(env_id: str, episodes: int = 100) -> float:
    returns = []
    env = make_env(env_id)
    env.action_space.seed(0)
    for i in range(episodes):
        env.reset(seed=i)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total += r
            done = term or trunc
        returns.append(total)
    return float(np.mean(returns))


def main(source: Path) -> None:
    here = Path(__file__).parent
    for name, env_id in ENVS.items():
        src = source / f"{name}.npz"
        with np.load(src, allow_pickle=False) as d:
            arrays = {k: d[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals",
                                        "timeouts", "episode_ids")}
        spec = env_spec(env_id)
        t = check_transitions(arrays, spec, name)
        returns = t.episode_returns()
        meta = {
            "env_id": env_id, "kind": "expert", "source": "HumanCompatibleAI/imitation test fixtures (see SOURCE.md)",
            "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
            "transitions": len(t), "episodes": len(returns),
            "ref_min_score": random_return(env_id), "ref_min_source": "uniform random policy, 100 episodes, seeds 0..99",
            "ref_max_score": float(returns.mean()), "ref_max_source": "this dataset's mean episode return",
            "episode_return_mean": float(returns.mean()), "episode_return_min": float(returns.min()),
            "episode_return_max": float(returns.max()),
        }
        save_transitions(here / name, arrays, meta)
        print(name, meta)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
