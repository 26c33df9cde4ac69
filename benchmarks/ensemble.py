"""Ensemble benchmark: N members trained at once (trainer.ensemble=N) against N sequential runs.

Usage: python benchmarks/ensemble.py [--members 8] [--steps 300] [--points 512,2048] [--equation heat]
                                     [--chunks auto,all] [--threads 1] [-- override ...]
Each sequential run is ``run_training`` with seed + i, which is exactly what ensemble member i is
(same initial weights, same collocation points, same Adam steps), so per-member accuracy should
agree within floating-point noise. Times are the training loops' ``wall_time_s`` (start-up
excluded; the sequential figure is the sum over the N runs). The table goes to stdout; the last
line is JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pinn_cli.ensemble import run_ensemble  # noqa: E402
from pinn_cli.paths import config_dir  # noqa: E402
from pinn_cli.training import run_training  # noqa: E402


def config(overrides: list[str]):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["trainer.progress=false", *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    return cfg


def measure(args, points: int, chunk: str) -> dict:
    n = args.members
    base = [f"equation={args.equation}", f"trainer.steps={args.steps}", f"sampler.n_interior={points}",
            f"sampler.n_boundary={max(16, points // 8)}", f"sampler.n_initial={max(16, points // 8)}",
            f"optimizer={args.optimizer}", f"device={args.device}", f"precision={args.precision}",
            f"trainer.log_every={max(1, args.steps // 5)}", f"trainer.eval_every={args.steps}",
            f"trainer.checkpoint_every={args.steps}", f"seed={args.seed}", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config([*base, f"trainer.ensemble={n}"])
        with open_dict(cfg):
            cfg.trainer.ensemble_chunk = n if chunk == "all" else (int(chunk) if chunk.isdigit() else chunk)
        ens = run_ensemble(cfg, Path(tmp) / "ensemble")
        seq = [run_training(config([*base, f"seed={args.seed + i}"]), Path(tmp) / f"seq{i}") for i in range(n)]
    e_rel = np.array([m["rel_l2"] for m in ens["members"]])
    s_rel = np.array([m["rel_l2"] for m in seq])
    t_seq = sum(m["wall_time_s"] for m in seq)
    return {
        "equation": args.equation, "points": points, "members": n, "steps": args.steps, "chunk": chunk,
        "device": ens["device"], "ensemble_s": ens["wall_time_s"], "sequential_s": round(t_seq, 3),
        "speedup": round(t_seq / ens["wall_time_s"], 3),
        "rel_l2_ensemble": e_rel.tolist(), "rel_l2_sequential": s_rel.tolist(),
        "max_rel_diff": float(np.max(np.abs(e_rel - s_rel) / s_rel)),
    }


def table(rows: list[dict]) -> str:
    lines = [("| equation | points/member | members | steps | chunk | device | vectorised (s) | sequential (s) "
              "| speedup | mean rel L2 (vec / seq) | max per-member rel. diff |"),
             "|---|---:|---:|---:|---|---|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(
            f"| {r['equation']} | {r['points']} | {r['members']} | {r['steps']} | {r['chunk']} | {r['device']} "
            f"| {r['ensemble_s']:.2f} | {r['sequential_s']:.2f} | {r['speedup']:.2f}x "
            f"| {np.mean(r['rel_l2_ensemble']):.3e} / {np.mean(r['rel_l2_sequential']):.3e} "
            f"| {r['max_rel_diff']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    overrides = []
    if "--" in argv:
        cut = argv.index("--")
        argv, overrides = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=8)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--points", default="512,2048", help="interior points per member, comma separated")
    p.add_argument("--equation", default="heat")
    p.add_argument("--optimizer", default="adam", help="adam keeps member i identical to run i")
    p.add_argument("--chunks", default="auto,all", help="trainer.ensemble_chunk values: auto, all, or an int")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    args.overrides = overrides
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("pinn").setLevel(logging.WARNING)
    rows = []
    for points in [int(x) for x in args.points.split(",")]:
        for chunk in args.chunks.split(","):
            rows.append(measure(args, points, chunk))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, optimizer={args.optimizer}, precision={args.precision}")
    print(table(rows))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
