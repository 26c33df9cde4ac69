"""L-BFGS benchmark: pinn's L-BFGS (pinn_cli/lbfgs.py) against torch.optim.LBFGS on a PINN loss.

Usage: python benchmarks/lbfgs.py [--quick] [--iters N] [--round N] [--threads N] [--device auto]
                                  [-- override ...]   (pinn train overrides; default: the heat default config)

Both optimizers start from the same network, taken after ``--adam`` Adam steps, and take turns in
rounds of ``--round`` iterations (random order each round), each continuing its own run. Reported
per iteration: the wall time, the time inside the loss and its backward (the closure), the rest
(the optimizer's own work), the paired ratio of the optimizer's own work and of the whole
iteration (median over rounds, with the interquartile range), the loss reached, and how far the
two runs' parameters are apart after the first round (the same iterates, up to rounding). Then the
direction alone for a full history: torch's two-loop recursion against pinn's triangular solves.
The last line is JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pinn_cli.lbfgs import LBFGS, _History  # noqa: E402
from pinn_cli.networks import trainable  # noqa: E402
from pinn_cli.optim import fused_adam  # noqa: E402
from pinn_cli.paths import config_dir  # noqa: E402
from pinn_cli.speed import tune_malloc  # noqa: E402
from pinn_cli.training import build  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: few iterations, small history")
    p.add_argument("--iters", type=int, default=300, help="L-BFGS iterations per optimizer")
    p.add_argument("--round", type=int, default=25, help="iterations per turn")
    p.add_argument("--adam", type=int, default=300, help="Adam steps before the L-BFGS runs start")
    p.add_argument("--history", type=int, default=50, help="L-BFGS history size")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="pinn train overrides, e.g. equation=burgers")
    args = p.parse_args(argv)
    if args.quick:
        args.iters, args.round, args.adam, args.history = 20, 5, 20, 5
    if min(args.iters, args.round, args.history) < 1 or args.adam < 0:
        p.error("--iters, --round and --history must be positive, --adam non-negative")
    return args


class Run:
    """One optimizer's L-BFGS run on its own copy of the network, timed per iteration."""

    def __init__(self, name: str, cls, setup, state: dict, history: int) -> None:
        self.name, self.setup = name, setup
        setup.net.load_state_dict(state)
        self.params = trainable(setup.net)
        self.opt = cls(self.params, lr=1.0, history_size=history, max_iter=1, line_search_fn="strong_wolfe",
                       tolerance_grad=1e-15, tolerance_change=1e-16)
        self.inside = 0.0
        self.iters = 0
        self.wall, self.own, self.rounds = [], [], []

    def closure(self):
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        total = self.setup.problem.loss()[0]
        total.backward()
        self.inside += time.perf_counter() - t0
        return total

    def iterate(self, n: int, sync) -> None:
        group = self.opt.param_groups[0]
        group["max_iter"], group["max_eval"] = n, 2 * n + 5
        state = self.opt.state[self.opt._params[0]]
        before = state.get("n_iter", 0)
        self.inside = 0.0
        sync()
        t0 = time.perf_counter()
        self.opt.step(self.closure)
        sync()
        wall = time.perf_counter() - t0
        done = max(1, state["n_iter"] - before)
        self.iters += done
        self.wall.append(wall / done)
        self.own.append((wall - self.inside) / done)
        self.rounds.append((wall / done, (wall - self.inside) / done))

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in self.params])

    def loss(self) -> float:
        """The loss where the run stands."""
        with torch.no_grad():
            return float(self.setup.problem.loss()[0])


def paired(a: Run, b: Run, k: int) -> tuple[float, float, float]:
    """Median and IQR over rounds of a's time / b's time (k = 0: whole iteration, 1: own work)."""
    r = sorted(x[k] / y[k] for x, y in zip(a.rounds, b.rounds))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return statistics.median(r), q[0], q[2]


def direction_times(state: dict, g: torch.Tensor, sync, reps: int = 50) -> tuple[float, float, float]:
    """ms for one direction with the history in ``state`` (no history update): torch's two-loop
    recursion, pinn's solves; and the relative difference of the two directions."""
    pairs = _History.pairs(state)
    h = state["H_diag"]
    ro = [1.0 / y.dot(s) for s, y in pairs]

    def two_loop():
        q, al = g.neg(), [None] * len(pairs)
        for i in range(len(pairs) - 1, -1, -1):
            al[i] = pairs[i][0].dot(q) * ro[i]
            q.add_(pairs[i][1], alpha=-al[i])
        r = torch.mul(q, h)
        for i in range(len(pairs)):
            be = pairs[i][1].dot(r) * ro[i]
            r.add_(pairs[i][0], alpha=al[i] - be)
        return r

    def ours():
        return _History.direction(state, g, h)

    out = []
    for fn in (two_loop, ours):
        for _ in range(5):
            fn()
        ts = []
        for _ in range(reps):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        out.append(1000 * statistics.median(ts))
    want = two_loop()
    return out[0], out[1], float((ours() - want).norm() / want.norm())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc()
    overrides = ["trainer.progress=false", f"device={args.device}", f"seed={args.seed}", *args.overrides]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.pop("hydra", None)
    setups = [build(cfg) for _ in range(2)]
    for s in setups:
        s.problem.sample(np.random.default_rng(args.seed))
        s.problem.plan()
        s.problem.configure("false")
    base = setups[0]
    device = base.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    adam = fused_adam(trainable(base.net), 1e-3)
    for _ in range(args.adam):
        adam.zero_grad(set_to_none=True)
        base.problem.loss()[0].backward()
        adam.step()
    start = copy.deepcopy(base.net.state_dict())
    runs = [Run("torch.optim.LBFGS", torch.optim.LBFGS, setups[0], start, args.history),
            Run("pinn LBFGS", LBFGS, setups[1], start, args.history)]
    order = random.Random(args.seed)
    first_round_dw = None
    while runs[0].iters < args.iters:
        for r in order.sample(runs, 2):
            r.iterate(min(args.round, args.iters - r.iters), sync)
        if first_round_dw is None:
            first_round_dw = float((runs[0].flat() - runs[1].flat()).abs().max())
    ref, ours = runs
    x_wall, x_own = paired(ref, ours, 0), paired(ref, ours, 1)
    ours.closure()
    hist = ours.opt.state[ours.opt._params[0]]
    t_loop, t_ours, dir_err = direction_times(hist, ours.opt._gather_flat_grad(), sync)
    stored = f"{hist['count']} of {hist['S'].shape[0]} pairs stored" + (", ring wrapped" if hist["head"] else "")

    ms = lambda v: 1000 * statistics.median(v)
    print(f"L-BFGS on {cfg.equation.name} ({sum(p.numel() for p in ours.params)} parameters, {cfg.precision}, "
          f"{device}, history {args.history}): {ref.iters} and {ours.iters} iterations, rounds of {args.round}")
    print(f"{'optimizer':<20} {'ms/iter':>8} {'own ms':>7} {'loss reached':>13}")
    for r in runs:
        print(f"{r.name:<20} {ms(r.wall):8.2f} {ms(r.own):7.2f} {r.loss():13.4e}")
    print(f"pinn faster by x{x_wall[0]:.2f} ({x_wall[1]:.2f}-{x_wall[2]:.2f}) per iteration, "
          f"x{x_own[0]:.2f} ({x_own[1]:.2f}-{x_own[2]:.2f}) in the optimizer's own work")
    print(f"after the first round the parameters differ by {first_round_dw:.1e}")
    print(f"direction alone ({stored}; no history update): two-loop {t_loop:.3f} ms, pinn {t_ours:.3f} ms "
          f"(relative difference {dir_err:.1e})")
    print(json.dumps({
        "benchmark": "lbfgs", "equation": cfg.equation.name, "device": str(device), "precision": cfg.precision,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
        "iters": args.iters, "round": args.round, "history": args.history,
        "results": [{"optimizer": r.name, "median_ms": round(ms(r.wall), 4), "own_ms": round(ms(r.own), 4),
                     "loss": r.loss(), "iters": r.iters} for r in runs],
        "x_iteration": [round(v, 4) for v in x_wall], "x_own": [round(v, 4) for v in x_own],
        "first_round_max_dw": first_round_dw,
        "direction_ms": {"two_loop": round(t_loop, 4), "pinn": round(t_ours, 4)}, "direction_rel_diff": dir_err,
        "stored_pairs": hist["count"], "ring_wrapped": bool(hist["head"]),
    }))


if __name__ == "__main__":
    main()
