"""Worked example: a PPO-Lagrangian agent on ``medsim/Glucose-v0``, compared in one ``medsim risk`` report.

Run (about 2 minutes on 2 shared cores, load average 6-7; training stops at 1 000 000 steps or after
7 minutes, so at most about 9)::

    python -m medsim.policies.rl_example --out reports/rl_glucose

1. Train stable-baselines3 PPO on the batched environment (:class:`medsim.policies.env.sb3.SB3VecEnv`,
   prior patients, seed 0; one compiled call steps all 128 patients) with the Lagrangian penalty
   ``reward - lam * cost``; after every rollout ``lam <- max(0, lam + lam_lr * (mean episode cost
   - budget))``. The episode cost is the sum of the intervals' Brownian-bridge violation
   probabilities, an upper bound (union bound) on the probability that the day's glucose path
   leaves 70-250 mg/dL, so ``budget`` = the spec's epsilon constrains the chance constraint itself.
2. Export the actor as ``agent.json`` + ``agent.safetensors`` (:mod:`medsim.policies.learned`).
3. Write the training curve (``training_curve.json``/``.png``: mean episode return = time in
   70-180 mg/dL, mean episode cost, ``lam``) and the agent's interaction timing on held-out
   patients (``timing.json``).
4. Run ``medsim risk`` on new prior patients (seed 1) with the agent, basal-bolus and PID: the same
   command and report as for any policy (``report/``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from medsim.io import atomic_write, write_text
from medsim.policies.builtin import BasalBolus
from medsim.policies.env import GLUCOSE, core
from medsim.policies.env.behaviour import behaviour_steps
from medsim.policies.learned import from_sb3, load_learned, save_learned

# Warm start in [-1, 1] action units: no bolus, basal 0.02 U/min (1.2 U/h), next look in ~60 min.
_START = {"bolus_cmt1": -1.0, "rate_cmt1": -0.6, "interval": -0.53}


def feature_scale(params: core.EnvParams, episodes: int = 16) -> np.ndarray:
    """Per-feature scale: mean |feature| along basal-bolus trajectories (floor 1e-2)."""
    obs = [s.observation[s.active] for s in behaviour_steps(params, BasalBolus(), np.arange(episodes))]
    return np.maximum(np.abs(np.concatenate(obs)).mean(axis=0), 1e-2).astype(np.float64)


def train(out: Path, *, timesteps: int, envs: int, minutes: float, budget: float, lam_lr: float, seed: int = 0) -> dict:
    """Train, export ``agent.json`` and the training curve; returns the curve."""
    import torch

    torch.manual_seed(seed)
    # A 64x64 network on minibatches of 512: one thread is as fast on an idle machine and avoids the
    # stalls of threads waiting for each other on busy shared cores (as medsim's neural training does).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(out, timesteps=timesteps, envs=envs, minutes=minutes, budget=budget, lam_lr=lam_lr, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _train(out: Path, *, timesteps: int, envs: int, minutes: float, budget: float, lam_lr: float, seed: int) -> dict:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger

    from medsim.policies.env.sb3 import SB3VecEnv

    params = core.make_params(GLUCOSE, seed=seed)
    scale = feature_scale(params)
    venv = SB3VecEnv(params, envs, scale=scale, first_episode=10_000)
    n_steps = max(8, min(4096 // envs, timesteps // envs))  # rollouts of ~4096 steps, fewer for tiny runs
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=n_steps,
        batch_size=min(512, n_steps * envs),
        n_epochs=5,
        learning_rate=3e-4,
        gamma=0.99,
        ent_coef=0.0,
        policy_kwargs={"net_arch": {"pi": [64, 64], "vf": [64, 64]}, "log_std_init": -1.0},
        seed=seed,
        device="cpu",
        verbose=0,
    )
    # no log folder: stable-baselines3's default logger makes one under the temp directory per run
    model.set_logger(Logger(folder=None, output_formats=[]))
    with torch.no_grad():
        model.policy.action_net.bias.copy_(torch.tensor([_START[n] for n in GLUCOSE.action_names]))
    curve: list[dict] = []
    start = time.perf_counter()

    class Lagrangian(BaseCallback):
        def _on_step(self) -> bool:
            return time.perf_counter() - start < 60.0 * minutes

        def _on_rollout_end(self) -> None:
            done, venv.finished = venv.finished, []
            if not done:
                return
            ret, cost = (float(np.mean(v)) for v in zip(*done, strict=True))
            venv.lam = max(0.0, venv.lam + lam_lr * (cost - budget))
            curve.append(
                {
                    "timesteps": int(self.num_timesteps),
                    "return": ret,
                    "cost": cost,
                    "lam": venv.lam,
                    "episodes": len(done),
                }
            )

    model.learn(total_timesteps=timesteps, callback=Lagrangian())
    weights, activation = from_sb3(model)
    training = {
        "algorithm": "PPO-Lagrangian (stable-baselines3)",
        "timesteps": int(model.num_timesteps),
        "envs": envs,
        "budget": budget,
        "seed": seed,
        "minutes": (time.perf_counter() - start) / 60.0,
    }
    save_learned(
        out / "agent.json",
        task="Glucose-v0",
        names=params.observation_names,
        weights=weights,
        activation=activation,
        scale=scale,
        output="unit",
        extra={"trained_with": "medsim/Glucose-v0", "training": training},
    )
    write_text(out / "training_curve.json", json.dumps({"training": training, "curve": curve}, indent=2) + "\n")
    _plot(out / "training_curve.png", curve)
    return {"training": training, "curve": curve}


def _plot(path: Path, curve: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    x = [c["timesteps"] for c in curve]
    axes[0].plot(x, [c["return"] for c in curve])
    axes[0].set(xlabel="environment steps", ylabel="episode return (time in 70-180 mg/dL)")
    axes[1].plot(x, [c["cost"] for c in curve], label="episode cost")
    axes[1].plot(x, [c["lam"] for c in curve], label="lambda")
    axes[1].set(xlabel="environment steps", ylabel="sum of bridge violation probabilities")
    axes[1].legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def timing(out: Path, *, episodes: int = 64, seed: int = 1) -> dict:
    """The agent's interaction intervals on held-out patients, by measured glucose band."""
    agent = load_learned(out / "agent.json")
    params = core.make_params(GLUCOSE, seed=seed)
    g = params.observation_names.index("measured:glucose_mg_dL")
    carbs = params.observation_names.index("announced:cmt2")
    rows = []
    for s in behaviour_steps(params, agent, np.arange(episodes)):
        a = s.active
        rows.append(
            np.column_stack([s.observation[a, g], s.observation[a, carbs], s.action[a, -1], s.outcome.interval[a]])
        )
    r = np.concatenate(rows)
    bands = {"<100": r[:, 0] < 100, "100-180": (r[:, 0] >= 100) & (r[:, 0] <= 180), ">180": r[:, 0] > 180}
    summary = {
        "interactions_per_day": len(r) / episodes,
        "asked_interval_quantiles_min": dict(
            zip(("10%", "50%", "90%"), np.percentile(r[:, 2], [10, 50, 90]).tolist(), strict=True)
        ),
        "median_asked_interval_by_glucose_min": {
            k: float(np.median(r[m, 2])) if m.any() else None for k, m in bands.items()
        },
        "share_of_interactions_by_glucose": {k: float(m.mean()) for k, m in bands.items()},
        "equidistant_for_comparison": {"basal_bolus": "every 240 min + meals", "pid": "every 5 min"},
    }
    write_text(out / "timing.json", json.dumps(summary, indent=2) + "\n")
    return summary


def risk_report(out: Path, *, n: int, seed: int = 1) -> list[str]:
    """Run ``medsim risk`` with the agent, basal-bolus and PID; returns the command."""
    cmd = [
        "medsim", "risk", "--prior", "glucose_insulin", "--policy", f"learned:{out / 'agent.json'}",
        "--policy", "basal_bolus", "--policy", "pid", "--spec", GLUCOSE.spec, "--n", str(n), "--seed", str(seed),
        "--out", str(out / "report"),
    ]  # fmt: skip
    subprocess.run([sys.executable, "-m", "medsim.cli", *cmd[1:]], check=True)
    return cmd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/rl_glucose"))
    parser.add_argument("--timesteps", type=int, default=1_000_000, help="environment steps to train for")
    parser.add_argument("--minutes", type=float, default=7.0, help="stop training earlier after this wall time")
    parser.add_argument("--envs", type=int, default=128, help="patients simulated together")
    parser.add_argument("--budget", type=float, default=0.05, help="episode cost budget (the spec's epsilon)")
    parser.add_argument("--lam-lr", type=float, default=0.05)
    parser.add_argument("--n", type=int, default=200, help="patients in the risk report")
    parser.add_argument("--no-report", action="store_true", help="skip timing and the medsim risk report")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = train(
        args.out, timesteps=args.timesteps, envs=args.envs, minutes=args.minutes, budget=args.budget, lam_lr=args.lam_lr
    )
    print(json.dumps(result["training"]))
    if args.no_report:
        return
    print(json.dumps(timing(args.out), indent=2))
    print(shlex.join(risk_report(args.out, n=args.n)))


if __name__ == "__main__":
    main()
