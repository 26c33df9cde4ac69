"""``pinn evaluate <run_dir>``: reload a run's checkpoint, recompute its metrics, redraw its plots.

The model is rebuilt from the resolved config saved in the checkpoint, so the metrics are those the
training run wrote (bit for bit, on the same device and evaluation grid); ``evaluate.resolution=N``
measures on a finer N-per-axis grid instead. Also home of the helpers that ``pinn hessian`` shares:
argument parsing and opening a run directory.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .. import checkpoint
from ..errors import PinnConfigError, PinnError

MAX_EVAL_POINTS = 4_000_000  # an evaluation set beyond this does not fit a typical machine's memory
USAGE = "usage: pinn evaluate <run_dir> [--checkpoint PATH] [evaluate.resolution=N] [device=cpu]"
ERROR_KEYS = ("rel_l2", "max_abs_error", "rmse")
MODEL_KEYS = ("steps", "final_loss", "wall_time_s")  # what describes the evaluated model besides its errors


def parse_argv(argv: list[str], usage: str, defaults: dict, top_level: tuple[str, ...] = (),
               details: str = "") -> tuple[Path, str | None, dict, dict]:
    """``<run_dir> [--checkpoint PATH] [key=value ...]`` -> run dir, checkpoint, options, top-level keys.

    ``defaults`` maps dotted option names (``hessian.top_k``) to default values; values are parsed
    as YAML (``hessian.terms=[pde,bc]`` is a list). Unknown keys fail with one line.
    """
    import yaml

    if any(a in ("-h", "--help") for a in argv):
        print(usage)
        if details:
            print(details.rstrip())
        else:
            print(f"options (key=value): {', '.join([*defaults, *top_level])}")
        raise SystemExit(0)
    run_dir, ckpt, opts, top = None, None, dict(defaults), {}
    it = iter(argv)
    for arg in it:
        if arg == "--checkpoint":
            ckpt = next(it, None)
            if ckpt is None:
                raise PinnError(f"--checkpoint needs a path; {usage}")
        elif arg.startswith("--checkpoint="):
            ckpt = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            raise PinnError(f"unknown flag {arg!r}; {usage}")
        elif "=" in arg:
            key, _, raw = arg.partition("=")
            key = key.lstrip("+")
            try:
                value = yaml.safe_load(raw) if raw != "" else None
            except yaml.YAMLError:
                value = raw
            if key in defaults:
                opts[key] = value
            elif key in top_level:
                top[key] = value
            else:
                accepted = ", ".join([*defaults, *top_level])
                raise PinnConfigError(f"{key} is not an option here; accepted: {accepted}")
        elif run_dir is None:
            run_dir = Path(arg)
        else:
            raise PinnError(f"one run directory expected, got {str(run_dir)!r} and {arg!r}; {usage}")
    if run_dir is None:
        raise PinnError(f"no run directory given; {usage}")
    return run_dir, ckpt, opts, top


def open_run(run_dir: Path, ckpt: str | None = None, overrides: dict | None = None):
    """Checkpoint path, its contents and its config (with ``overrides`` applied) for a run directory."""
    from omegaconf import OmegaConf, open_dict

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise PinnError(f"{run_dir} is a file; give a run directory (one with checkpoints/ and .hydra/)")
    if not run_dir.is_dir():
        raise PinnError(f"run directory {run_dir} does not exist")
    if ckpt is not None:
        path = Path(ckpt)
        if not path.is_absolute() and not path.exists():
            for cand in (run_dir / ckpt, run_dir / "checkpoints" / ckpt):
                if cand.exists():
                    path = cand
                    break
    else:
        found = [p for p in (run_dir / "checkpoints" / "best.pt", run_dir / "checkpoints" / "last.pt") if p.exists()]
        if not found:
            raise PinnError(f"{run_dir} has no checkpoints/best.pt or checkpoints/last.pt; is it a pinn run directory?")
        path = found[0]
    state = checkpoint.load(path)
    _check_same_run(run_dir, path, state)
    cfg = OmegaConf.create(state["config"])
    with open_dict(cfg):
        for key, value in (overrides or {}).items():
            OmegaConf.update(cfg, key, value, merge=False)
        cfg.trainer.progress = False
    return path, state, cfg


SAME_RUN_KEYS = ("equation", "network", "seed", "sampler", "domain")


def _check_same_run(run_dir: Path, path: Path, state: dict) -> None:
    """A checkpoint from elsewhere must be of this directory's run: its figures and plots are rewritten
    with the run's own history.csv, so another run's model would leave a mix of the two."""
    own = [p for p in (run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt") if p.is_file()]
    if not own or any(path.resolve() == p.resolve() for p in own):
        return
    try:
        mine = checkpoint.load(own[0]).get("config", {})
    except PinnError:  # an unreadable own checkpoint: nothing to compare with
        return
    theirs = state.get("config", {})
    differ = next((k for k in SAME_RUN_KEYS if mine.get(k) != theirs.get(k)), None)
    if differ:
        raise PinnError(
            f"checkpoint {path} is from another run ({differ} differs from {run_dir}'s); evaluate it in its own "
            f"run directory"
        )


def read_history(run_dir: Path, state: dict) -> list[dict]:
    """history.csv of the run (the complete one), else the history stored in the checkpoint."""
    path = run_dir / "history.csv"
    if path.is_file():
        try:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            return [{k: (float(v) if v not in ("", None) else None) for k, v in r.items()} for r in rows]
        except (OSError, ValueError, csv.Error):
            pass
    return list(state.get("history") or [])


def checkpoint_figures(run_dir: Path, state: dict, cfg) -> dict:
    """steps, final_loss, wall_time_s (and status) of the checkpoint's own model, so metrics.json
    describes one model even when best.pt is older than the end of training."""
    step = state.get("step")
    out: dict = {"steps": step}
    if state.get("elapsed_s") is not None:
        out["wall_time_s"] = round(float(state["elapsed_s"]), 3)
    rows = [r for r in read_history(run_dir, state) if r.get("step") is not None and r["step"] <= (step or 0)]
    if rows and rows[-1].get("loss") is not None:
        out["final_loss"] = rows[-1]["loss"]
    if isinstance(step, int) and step >= cfg.trainer.steps:
        out["status"] = "done"
    return out


def rel(path: Path, run_dir: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(run_dir).resolve()))
    except ValueError:
        return str(path)


def _old_metrics(run_dir: Path) -> dict:
    """metrics.json as the run left it ({} when missing or unreadable)."""
    path = run_dir / "metrics.json"
    try:
        old = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        old = {}
    return old if isinstance(old, dict) else {}


def merge_metrics(run_dir: Path, new: dict, info: dict, old: dict) -> dict:
    """metrics.json (``old`` as read) with the recomputed figures replacing the old ones; the training
    run's own figures are kept under ``evaluate.training`` (nothing written by training is lost)."""
    path = run_dir / "metrics.json"
    training = (old.get("evaluate") or {}).get("training")
    if training is None:
        training = {k: old[k] for k in (*ERROR_KEYS, *MODEL_KEYS, "per_output", "members", "ensemble") if k in old}
    merged = {**old, **new}
    matches = None
    if all(k in training for k in ERROR_KEYS):
        matches = all(training[k] == new.get(k) for k in ERROR_KEYS)
    merged["evaluate"] = {**info, "matches_training": matches, "training": training}
    checkpoint.write_json(merged, path)
    return merged


def evaluate_single(cfg, state: dict, run_dir: Path, resolution: int | None) -> tuple[dict, int]:
    """Metrics of a single-network checkpoint on the evaluation grid; redraws the plots."""
    from .. import plots
    from ..metrics import Evaluator
    from ..networks import trainable
    from ..training import build

    setup = build(cfg)
    try:
        setup.net.load_state_dict(state["model"])
    except RuntimeError:
        raise PinnError("the checkpoint's weights do not match the network its config describes") from None
    setup.net.eval()
    ev = setup.evaluator
    if resolution is not None:
        n, dim = resolution ** setup.domain.dim, setup.domain.dim
        if n > MAX_EVAL_POINTS:
            raise PinnConfigError(
                f"evaluate.resolution={resolution} asks for {resolution}^{dim} = {n:.3g} points in {dim} dimensions; "
                f"at most {MAX_EVAL_POINTS:.0e} (evaluate.resolution <= {int(MAX_EVAL_POINTS ** (1 / dim))})"
            )
        ev = Evaluator(setup.equation, setup.domain, n, setup.device, setup.dtype)
    metrics = ev.metrics(setup.net)
    eq = setup.equation
    plots.plot_solution(
        *ev.plot_data(setup.net), eq.inputs, eq.outputs,   # the plotting grid, NaN outside a disk/polygon
        f"{eq.name}: rel L2 {metrics['rel_l2']:.2e}, max |err| {metrics['max_abs_error']:.2e} "
        f"(pinn evaluate: the model of step {state.get('step')})",
        run_dir / "solution.png", time=eq.time,
    )
    history = read_history(run_dir, state)
    if history:
        plots.plot_loss(history, [t.name for t in setup.problem.terms], run_dir / "loss_curve.png")
    base = {"equation": eq.name, "n_params": sum(p.numel() for p in trainable(setup.net)),
            "device": str(setup.device), "precision": cfg.precision}
    return {**base, **metrics}, len(ev.x)


def main(argv: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    run_dir, ckpt, opts, top = parse_argv(argv, USAGE, {"evaluate.resolution": None}, ("device",))
    resolution = opts["evaluate.resolution"]
    if resolution is not None and (not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 2):
        raise PinnConfigError(f"evaluate.resolution={resolution!r} is invalid; it must be an integer >= 2 (points per axis)")
    path, state, cfg = open_run(run_dir, ckpt, top)
    if state.get("ensemble"):
        from ..ensemble import evaluate_checkpoint

        new, n_points = evaluate_checkpoint(cfg, state, run_dir, resolution)
    else:
        new, n_points = evaluate_single(cfg, state, run_dir, resolution)
    info = {"checkpoint": rel(path, run_dir), "step": state.get("step"), "eval_points": n_points,
            "resolution": resolution}
    old = _old_metrics(run_dir)
    figures = checkpoint_figures(run_dir, state, cfg)
    if old.get("steps") != figures["steps"]:  # another model than training's last (or none)
        new.update(figures)
    merged = merge_metrics(run_dir, new, info, old)

    training = merged["evaluate"]["training"]
    table = Table(title=f"pinn evaluate: {merged.get('equation', '')} ({info['checkpoint']}, step {info['step']})",
                  title_justify="left")
    for col in ("metric", "evaluated", "training run"):
        table.add_column(col)
    for key in ERROR_KEYS:
        old = training.get(key)
        table.add_row(key, f"{new[key]:.6e}", "-" if old is None else f"{old:.6e}")
    if "ensemble" in new:
        for m in new["members"]:
            table.add_row(f"  member {m['member']} rel_l2", f"{m['rel_l2']:.6e}", "")
    Console().print(table)
    matches = merged["evaluate"]["matches_training"]
    if matches is True:
        print("metrics equal those of the training run")
    elif matches is False:
        why = f"resolution {resolution} per axis" if resolution else f"checkpoint {info['checkpoint']} (step {info['step']})"
        print(f"metrics differ from the training run's ({why}); its figures are kept under evaluate.training")
    print(f"wrote {run_dir / 'metrics.json'}, solution.png, loss_curve.png", flush=True)
