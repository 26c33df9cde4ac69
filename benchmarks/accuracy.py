"""Accuracy table: train every equation's default config, report rel L2, max error, steps and time.

Usage: python benchmarks/accuracy.py [equation ...] [--write-readme] [--threads N] [-- override ...]
The table goes to stdout (and, with --write-readme, between the accuracy markers of README.md);
the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pinn_cli.paths import config_dir  # noqa: E402
from pinn_cli.training import run_training  # noqa: E402

# rel L2 targets from the issues (2-core CPU; foundation: < 60 s, library: < 10 min per run)
TARGETS = {
    "heat": 1e-4, "poisson2d": 5e-4, "ode_decay": 5e-4, "ode_bvp": 5e-4, "burgers": 3e-3,
    "kovasznay": 1e-3, "wave": 1e-2, "helmholtz": 1e-2, "klein_gordon": 1e-2,
    "diffusion_reaction": 1e-3, "poisson_nd": 3e-3, "taylor_green": 1e-2, "advection": 1e-3, "laplace2d": 1e-3,
}
MARK = "<!-- accuracy-table: produced by `make accuracy` (benchmarks/accuracy.py) -->"


def run(equation: str, overrides: list[str], threads: int) -> dict:
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"equation={equation}", "trainer.progress=false", *overrides])
    with open_dict(cfg):
        cfg.pop("hydra", None)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = run_training(cfg, Path(tmp))
        m["total_s"] = time.perf_counter() - t0
    m["target"] = TARGETS.get(equation)
    m["measured"] = f"{threads} thr, load {load:.1f}"
    ff = cfg.network.get("fourier_features") or 0
    m["config"] = f"{cfg.network.width}x{cfg.network.depth} {cfg.network.activation}" \
                  f"{f' + {ff} Fourier features' if ff else ''}, {cfg.optimizer.name}, " \
                  f"{cfg.sampler.n_interior} pts, {cfg.precision}"
    return m


HEADER = ["| equation | rel L2 | target | met | max abs error | steps | training time (s) | setup | measured |",
          "|---|---:|---:|:-:|---:|---:|---:|---|---|"]


def row(m: dict) -> str:
    target = m["target"]
    met = "" if target is None else ("yes" if m["rel_l2"] <= target else "**no**")
    return (f"| {m['equation']} | {m['rel_l2']:.2e} | {'' if target is None else f'{target:.0e}'} | {met} "
            f"| {m['max_abs_error']:.2e} | {m['steps']} | {m['wall_time_s']:.1f} | {m['config']} | {m['measured']} |")


def table(rows: list[str]) -> str:
    return "\n".join(HEADER + rows)


def merged_rows(old_block: str, new: dict[str, str], order: list[str]) -> list[str]:
    """README rows: the equations just run replace theirs; the others keep their earlier measurement."""
    rows = {}
    for line in old_block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == len(HEADER[0].strip("|").split("|")) and cells[0] in order:
            rows[cells[0]] = line
    rows.update(new)
    return [rows[name] for name in order if name in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("equations", nargs="*")
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--override", action="append", default=[], help="a config override for every run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = args.equations or [p.stem for p in sorted((config_dir() / "equation").glob("*.yaml"))
                               if p.stem != "custom"]
    rows = []
    for name in names:
        m = run(name, args.override, args.threads)
        rows.append(m)
        print(f"{name}: rel L2 {m['rel_l2']:.3e} in {m['wall_time_s']:.1f} s ({m['steps']} steps)", flush=True)
    env = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    note = (f"_{env}; training time is the training loop (evaluation and checkpoints included); "
            "measured: torch threads and the 1-minute load average when the run started._")
    print()
    print(table([row(m) for m in rows]))
    print(f"\n{note}")
    if args.write_readme:
        readme = REPO / "README.md"
        body = readme.read_text()
        head, _, tail = body.partition(MARK)
        old, sep, after = tail.partition("<!-- end accuracy-table -->")
        if not sep:
            old, after = "", tail
        order = [p.stem for p in sorted((config_dir() / "equation").glob("*.yaml")) if p.stem != "custom"]
        order = [n for n in TARGETS if n in order] + [n for n in order if n not in TARGETS]
        text = table(merged_rows(old, {m["equation"]: row(m) for m in rows}, order))
        readme.write_text(f"{head}{MARK}\n{text}\n\n{note}\n{sep or '<!-- end accuracy-table -->'}{after}")
    print(json.dumps({"accuracy": [{k: m[k] for k in ("equation", "rel_l2", "max_abs_error", "steps",
                                                       "wall_time_s", "target")} for m in rows]}))


if __name__ == "__main__":
    main()
