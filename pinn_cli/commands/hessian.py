"""``pinn hessian <run_dir>``: spectrum of the loss Hessian w.r.t. the network parameters.

Top-k eigenvalues (Lanczos), trace (Hutchinson) and spectral density (stochastic Lanczos
quadrature) for the total loss and each weighted loss term, from Hessian-vector products on the
checkpoint's training points; writes ``hessian.json`` and ``hessian_spectrum.png`` in the run dir.
"""
from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

from ..errors import PinnConfigError, PinnError
from .evaluate import open_run, parse_argv, rel

USAGE = ("usage: pinn hessian <run_dir> [--checkpoint PATH] [hessian.top_k=5 hessian.iters=100 "
         "hessian.points=2048 hessian.terms=[pde,bc] ...] [device=cpu precision=float64 derivatives=auto]")

OPTIONS = {  # key: (default, what it means), printed by --help
    "hessian.top_k": (5, "largest eigenvalues reported (above the parameter count: all of them)"),
    "hessian.iters": (100, "Lanczos steps at most (top-k stops earlier once converged; SLQ runs all)"),
    "hessian.tol": (1e-6, "top-k converged when |beta s_m| <= tol * |lambda_max|"),
    "hessian.points": (2048, "at most this many training points per loss term (0 = all of them)"),
    "hessian.chunk": (0, "> 0: products streamed over chunks of this many points (less memory)"),
    "hessian.terms": (None, "loss terms analysed besides the total (null = all of them)"),
    "hessian.trace_samples": (50, "Hutchinson probes (0 = no trace)"),
    "hessian.slq_vectors": (3, "stochastic Lanczos quadrature starts (0 = no density)"),
    "hessian.seed": (0, "seed of the random start and probe vectors, and of the point subset (hessian.points)"),
    "hessian.member": (0, "which member of an ensemble run"),
}
DEFAULTS = {key: default for key, (default, _) in OPTIONS.items()}
DETAILS = "options (key=value):\n" + "\n".join(
    f"  {k + '=' + ('null' if v[0] is None else str(v[0])):<26} {v[1]}" for k, v in OPTIONS.items()
) + "\n  device, precision, derivatives: override the run's own settings"


def _options(opts: dict) -> dict:
    from ..config import positive_float, positive_int

    out = {}
    for key in ("top_k", "iters"):
        out[key] = positive_int(opts[f"hessian.{key}"], f"hessian.{key}")
    for key in ("points", "chunk", "trace_samples", "slq_vectors", "member"):
        out[key] = positive_int(opts[f"hessian.{key}"], f"hessian.{key}", allow_zero=True)
    if out["trace_samples"] == 1:
        raise PinnConfigError("hessian.trace_samples=1 is invalid; an interval needs 0 or at least 2 samples")
    out["tol"] = positive_float(opts["hessian.tol"], "hessian.tol", allow_zero=True)
    seed = opts["hessian.seed"]
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise PinnConfigError(f"hessian.seed={seed!r} is invalid; it must be an integer")
    out["seed"] = seed
    terms = opts["hessian.terms"]
    if terms is not None:
        if isinstance(terms, str):
            terms = [t.strip() for t in terms.strip("[]").split(",") if t.strip()]
        if not isinstance(terms, (list, tuple)):
            raise PinnConfigError(f"hessian.terms={terms!r} is invalid; give a list such as [pde,bc]")
        terms = [str(t) for t in terms]
    out["terms"] = terms
    return out


def clamp_top_k(top_k: int, iters: int, n_params: int) -> tuple[int, str | None]:
    """How many eigenvalues to compute, and the note to print when that is fewer than asked.

    A Hessian of ``n_params`` parameters has only that many eigenvalues, so a larger ``top_k`` asks
    for all of them: it is clamped, and needs ``iters`` only up to the smaller of the two. Fewer
    ``iters`` than the count to compute cannot give that many Ritz values: refused, naming both."""
    k = min(top_k, n_params)
    if k > iters:
        asked = f"hessian.top_k={top_k}" + (f" (clamped to the network's {n_params} parameters)" if k < top_k else "")
        raise PinnConfigError(f"{asked} needs hessian.iters >= {k} "
                              f"(Lanczos finds at most iters eigenvalues; it is {iters})")
    if k == top_k:
        return k, None
    return k, (f"pinn hessian: hessian.top_k={top_k} exceeds the network's {n_params} parameters; using "
               f"hessian.top_k={k}, the whole spectrum (a repeated eigenvalue is listed once)")


def _peak_memory_mb(device) -> dict:
    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def run(run_dir: Path, ckpt: str | None, opts: dict, top: dict) -> dict:
    """Analyse a run's checkpoint; writes hessian.json and hessian_spectrum.png, returns the results."""
    import numpy as np

    from .. import hessian as hs
    from ..networks import trainable
    from ..training import build

    o = _options(opts)
    path, state, cfg = open_run(run_dir, ckpt, top)
    setup = build(cfg)
    model, points = state["model"], state.get("points")
    ens = state.get("ensemble")
    if not ens and o["member"]:
        raise PinnConfigError(f"hessian.member={o['member']} applies to ensemble runs; {run_dir} holds one network")
    if ens:
        if o["member"] >= ens["n"]:
            raise PinnConfigError(f"hessian.member={o['member']} is out of range; this ensemble has {ens['n']} members")
        from ..ensemble import member_setup

        setup = member_setup(cfg, o["member"])
        model = {k: v[o["member"]] for k, v in model.items()}
        points = points[o["member"]] if points is not None else None
    try:
        setup.net.load_state_dict(model)
    except RuntimeError:
        raise PinnError("the checkpoint's weights do not match the network its config describes") from None
    problem = setup.problem
    if points is not None:
        problem.load_state(points)
    else:
        problem.sample(np.random.default_rng(cfg.seed))
    problem.plan()
    counts = hs.subsample(problem, o["points"], o["seed"])
    t_cfg = cfg.trainer  # the loss training minimised: causal weighting of the PDE term included
    problem.set_causal(int(t_cfg.get("causal_chunks", 0) or 0), float(t_cfg.get("causal_eps", 1.0)))
    params = trainable(setup.net)
    n = sum(p.numel() for p in params)
    requested = o["top_k"]
    o["top_k"], note = clamp_top_k(requested, o["iters"], n)
    if note:
        print(note, file=sys.stderr)

    results, t_all = {}, time.perf_counter()
    for name, weight, pieces in hs.targets(problem, o["terms"], o["chunk"]):
        t0 = time.perf_counter()
        hvp = hs.HVP(pieces, params)
        loss = float(hvp.loss.detach())
        r = hs.analyze(hvp, n, top_k=o["top_k"], iters=o["iters"], tol=o["tol"],
                       trace_samples=o["trace_samples"], slq_vectors=o["slq_vectors"], seed=o["seed"],
                       device=setup.device)
        hvp.release()
        results[name] = {"loss": loss, "weight": weight, **r, "hvp_calls": hvp.calls,
                         "time_s": round(time.perf_counter() - t0, 3)}
        del hvp
    out = {
        "checkpoint": rel(path, run_dir), "step": state.get("step"), "equation": setup.equation.name,
        "n_params": n, "points": counts, "device": str(setup.device), "precision": cfg.precision,
        "derivatives": {t.name: t.engine for t in problem.terms},
        "member": o["member"] if ens else None,
        "options": {k: o[k] for k in ("top_k", "iters", "tol", "points", "chunk", "terms", "trace_samples",
                                      "slq_vectors", "seed")} | {"top_k_requested": requested},
        "time_s": round(time.perf_counter() - t_all, 3), **_peak_memory_mb(setup.device),
        "note": "each term is the weighted loss weight * mean(residual^2); total is their sum"
                + ("; the pde term is causally weighted as in training (trainer.causal_chunks), its chunk "
                   "weights at this checkpoint held constant" if problem.causal is not None else ""),
        "results": results,
    }
    (run_dir / "hessian.json").write_text(json.dumps(out, indent=1, default=_json_default) + "\n")
    hs.plot_spectrum(results, run_dir / "hessian_spectrum.png")
    return out


def _json_default(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    raise TypeError(type(x).__name__)


def main(argv: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    run_dir, ckpt, opts, top = parse_argv(argv, USAGE, DEFAULTS, ("device", "precision", "derivatives"), DETAILS)
    out = run(run_dir, ckpt, opts, top)
    table = Table(title=f"pinn hessian: {out['equation']}, {out['n_params']} parameters, step {out['step']}",
                  title_justify="left")
    for col in ("loss", "top eigenvalues", "converged", "λ min", "cond.", "trace (95% CI)", "time"):
        table.add_column(col)
    for name, r in out["results"].items():
        tr = r.get("trace")
        table.add_row(
            name if r["weight"] in (None, 1.0) else f"{r['weight']:g}·{name}",
            ", ".join(f"{v:.4g}" for v in r["top_eigenvalues"]),
            f"{sum(r['converged'])}/{len(r['converged'])} in {r['lanczos_iterations']}",
            f"{r['lambda_min']:.3g}",
            "-" if r["condition_number"] is None else f"{r['condition_number']:.3g}",
            "-" if not tr else f"{tr['estimate']:.4g} [{tr['interval'][0]:.4g}, {tr['interval'][1]:.4g}]",
            f"{r['time_s']:.1f}s",
        )
    Console().print(table)
    mem = f"peak RSS {out['peak_rss_mb']:.0f} MB" + (
        f", peak CUDA {out['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in out else "")
    print(f"{mem}; wrote {run_dir / 'hessian.json'} and hessian_spectrum.png", flush=True)
