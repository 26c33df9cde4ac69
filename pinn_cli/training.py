"""The training loop: a plain PyTorch loop over a ``Problem``, with no Hydra inside."""
from __future__ import annotations

import csv
import importlib
import logging
import math
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint, distributed, plots
from .config import resolve_device, resolve_dtype, validate
from .derivatives import DerivativeEngine
from .domains import Box, build_domain
from .equations.base import Equation
from .errors import PinnConfigError, PinnError, RunDirInUse
from .hydra_record import restore_earlier_record
from .metrics import Evaluator
from .networks import build_network, trainable
from .optim import Interrupted, OptimizerSchedule
from .problem import Problem
from .sampling import check_sampler
from .speed import set_tf32, tune_malloc

log = logging.getLogger("pinn")


def build_equation(cfg: DictConfig) -> Equation:
    """Instantiate the equation class named by ``cfg._target_`` with the config's keys."""
    kwargs = OmegaConf.to_container(cfg, resolve=True)
    target = kwargs.pop("_target_", None)
    kwargs.pop("description", None)
    if target is None:
        raise PinnConfigError(f"equation {kwargs.get('name', '')!r} has no _target_; an equation written in YAML "
                              f"starts with `defaults: [custom]`")
    for key, value in [*kwargs.items(), *((f"params.{k}", v) for k, v in (kwargs.get("params") or {}).items())]:
        if isinstance(value, float) and not math.isfinite(value):
            raise PinnConfigError(f"equation.{key}={value!r} is invalid; it must be a finite number")
    module, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except AttributeError:
        raise PinnConfigError(f"equation._target_={target!r} cannot be imported: module {module} has no {name}") from None
    except Exception as err:  # noqa: BLE001 - whatever the import raised (a missing module, a syntax error)
        why = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise PinnConfigError(f"equation._target_={target!r} cannot be imported ({type(err).__name__}: {why})") from None
    return cls(**kwargs)


@dataclass
class Setup:
    """Everything a run is made of, built from a config (shared by train, evaluate and analysis)."""

    cfg: DictConfig
    device: torch.device
    dtype: torch.dtype
    equation: Equation
    domain: Box
    net: torch.nn.Module
    problem: Problem
    evaluator: Evaluator


def build(cfg: DictConfig) -> Setup:
    """Validate ``cfg`` and build the equation, domain, network, problem and evaluator."""
    validate(cfg)
    check_sampler(cfg.sampler.name)
    dtype = resolve_dtype(cfg.precision)
    device = distributed.local_device(resolve_device(cfg.device, dtype))
    torch.manual_seed(cfg.seed)
    equation = build_equation(cfg.equation)
    domain = build_domain(cfg.domain, equation)
    _check_initial_time(equation, domain)
    bounds = domain.bounds   # the domain's bounding box per input: network inputs are scaled from it
    net = build_network(cfg.network, len(equation.inputs), len(equation.outputs), bounds).to(device, dtype)
    engine = DerivativeEngine(cfg.derivatives, net, equation.inputs, equation.outputs)
    problem = Problem(equation, domain, net, engine, cfg.sampler, device, dtype)
    evaluator = Evaluator(equation, domain, cfg.trainer.eval_points, device, dtype)
    return Setup(cfg, device, dtype, equation, domain, net, problem, evaluator)


def _check_initial_time(equation, domain) -> None:
    """Initial conditions are posed at the equation's t0: a domain starting elsewhere would apply
    them at another time (``domain.bounds.t=[0.5,1]``); moving t0 is ``equation.bounds.t``'s job."""
    if equation.time is None or domain.t_bounds is None:
        return
    t_eq, t_dom = equation.bounds[equation.time][0], domain.t_bounds[0]
    if abs(t_eq - t_dom) > 1e-12 * max(1.0, abs(t_eq)) and any(c.on == "initial" for c in equation.conditions()):
        raise PinnConfigError(
            f"domain.bounds.{equation.time} starts at {t_dom:g}, but equation {equation.name}'s initial conditions "
            f"are posed at {equation.time} = {t_eq:g}; extend the end time only, or move the start with "
            f"equation.bounds.{equation.time}"
        )


class _Stop:
    """Set by SIGTERM/SIGUSR1 (cluster preemption): the loop saves last.pt and exits cleanly."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous: dict = {}

    def __call__(self, signum, frame) -> None:
        self.signal = signum

    def chain(self, signum: int | None) -> None:
        """After last.pt is written, hand the signal on to the handler that was installed before ours
        (submitit's: it requeues the job, which resumes with trainer.resume=auto)."""
        handler = self.previous.get(signum)
        if signum and callable(handler):
            handler(signum, None)


def _submitit_signal():
    """The signal submitit sends before a timeout or on preemption (USR2 unless SUBMITIT_PREEMPT_SIGNAL says),
    caught only when a Python handler for it is installed (inside a submitit job)."""
    import os

    sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    return sig if sig is not None and callable(signal.getsignal(sig)) else None


def inside_submitit() -> bool:
    """Whether submitit runs this process (it requeues a preempted job itself, on its own signal)."""
    import os

    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def inside_sweep() -> bool:
    """Whether this run is a job of a Hydra multirun (``pinn train -m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def _preemption_handler():
    stop = _Stop()
    # inside submitit, SIGTERM stays submitit's (it ignores it: the requeue comes with its own signal, and a
    # job that stopped on SIGTERM would end "completed", never requeued)
    term = None if inside_submitit() else signal.SIGTERM
    sigs = [s for s in (term, getattr(signal, "SIGUSR1", None), _submitit_signal()) if s is not None]
    try:
        old = {s: signal.signal(s, stop) for s in dict.fromkeys(sigs)}
    except ValueError:
        old = {}
    stop.previous = old
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _Progress:
    """A rich progress bar on a terminal; plain log lines otherwise.

    While the bar runs, the console log handlers write through rich (lines appear above the bar
    instead of into it) and show only the lines with a rel L2; files such as train.log still get a
    line every ``trainer.log_every`` steps."""

    def __init__(self, total: int, enabled: bool, step: int = 0) -> None:
        self.enabled = enabled and sys.stdout.isatty()
        self.bar = None
        self.last = (time.perf_counter(), step)
        self._consoles: list[tuple[logging.StreamHandler, object]] = []
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("step {task.completed}/{task.total}"), BarColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("rel L2 {task.fields[rel]}"),
                TextColumn("{task.fields[speed]} it/s"), TimeRemainingColumn(),
            )
            self.task = self.bar.add_task("train", total=total, loss="-", rel="-", speed="-")
            self.bar.start()
            for h in logging.getLogger().handlers:
                if type(h) is logging.StreamHandler and h.stream in (sys.__stdout__, sys.__stderr__):
                    proxy = sys.stdout if h.stream is sys.__stdout__ else sys.stderr  # rich's, while the bar runs
                    self._consoles.append((h, h.setStream(proxy)))
                    h.addFilter(_bar_only_shows)

    def update(self, step: int, loss: float, rel: float | None, speed: float) -> None:
        if self.bar is not None:
            fields = {"loss": f"{loss:.3e}", "speed": f"{speed:.0f}"}
            if rel is not None:
                fields["rel"] = f"{rel:.3e}"
            self.bar.update(self.task, completed=step, **fields)

    def report(self, row: dict, what: str = "loss") -> None:
        """Show a history row: the bar and a log line (on a terminal only when rel L2 was measured)."""
        now, step = time.perf_counter(), row["step"]
        speed = (step - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, step)
        self.update(step, row["loss"], row["rel_l2"], speed)
        rel = "" if row["rel_l2"] is None else f" {what.replace('loss', 'rel_l2')} {row['rel_l2']:.4e}"
        causal = "" if row.get("causal_w_min") is None else f" causal_w_min {row['causal_w_min']:.2e}"
        log.info("step %d %s %.4e%s lr %.2e%s %.0f it/s", step, what, row["loss"], rel, row["lr"], causal, speed,
                 extra={"bar_shows_it": self.bar is not None and row["rel_l2"] is None})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            for h, stream in self._consoles:
                h.removeFilter(_bar_only_shows)
                h.setStream(stream)
            self._consoles = []


def _bar_only_shows(record: logging.LogRecord) -> bool:
    """Console filter while the bar runs: drop the step lines the bar already shows."""
    return not getattr(record, "bar_shows_it", False)


def _write_history(rows: list[dict], columns: list[str], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})


def _rng_state(rng: np.random.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state}


def resample_due(cfg: DictConfig, step: int) -> bool:
    """Whether the Adam phase draws fresh points before ``step`` (``sampler.resample_every``)."""
    every = cfg.sampler.resample_every
    return bool(every) and step > 0 and step % every == 0


def row_due(t_cfg, step: int) -> bool:
    """Whether ``step`` gets a history row: every log_every, eval_every and checkpoint_every step
    (an evaluation or checkpoint off the log grid still happens when it is due)."""
    return any(step % t_cfg[k] == 0 for k in ("log_every", "eval_every", "checkpoint_every"))


def steps_to_row(t_cfg, step: int, total: int) -> int:
    """Optimizer steps from ``step`` to the next row (an L-BFGS block ends there)."""
    return min(total, *(step + e - step % e for e in (t_cfg.log_every, t_cfg.eval_every, t_cfg.checkpoint_every))) - step


def refuse_used_run_dir(resume: Path | None, run_dir: Path) -> None:
    """A fresh run must not write over another run's checkpoints (nor name them as its own)."""
    if resume is not None:
        return
    ctx = distributed.context()
    old = [p.name for p in (run_dir / "checkpoints" / n for n in ("last.pt", "best.pt")) if p.is_file()]
    if distributed.share(old if ctx.is_main else None):
        if ctx.is_main:
            restore_earlier_record(run_dir / ".hydra")
        elsewhere = "hydra.sweep.dir" if inside_sweep() else "hydra.run.dir"
        raise RunDirInUse(
            f"run directory {run_dir} already holds checkpoints of an earlier run; continue it with "
            f"trainer.resume=auto, or start afresh in another {elsewhere}"
        )


def say_resume_plan(setting, resume: Path | None, ckpt_dir: Path) -> None:
    """``trainer.resume=auto`` with no checkpoint starts afresh: say so, rather than nothing."""
    if resume is None and setting == "auto":
        log.info("trainer.resume=auto: no checkpoint in %s, so training starts at step 0", ckpt_dir)


def warn_changed_settings(saved: dict, current: dict) -> None:
    """A resume carries on the checkpoint's points, optimizer state and random streams, so a changed
    sampler size or lr would be silently ineffective: name the settings that differ."""
    changed = changed_settings(saved, current)
    if changed:
        log.warning("resuming with settings changed since the checkpoint: %s; its training points, "
                    "optimizer state and random streams carry on", ", ".join(changed))


def resolve_resume(value, run_dir: Path) -> Path | None:
    """``trainer.resume``: null (fresh), ``auto`` (last.pt of this run dir if present) or a path."""
    if value in (None, "", False, "none", "null"):
        return None
    if value == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    return Path(str(value))


def run_training(cfg: DictConfig, run_dir: Path | str) -> dict:
    """Train the PINN described by ``cfg``; write checkpoints, history, metrics and plots into ``run_dir``."""
    run_dir = Path(run_dir)
    ctx = distributed.init()
    setup = build(cfg)
    net, problem, evaluator, equation = setup.net, setup.problem, setup.evaluator, setup.equation
    t_cfg = cfg.trainer
    total = t_cfg.steps
    rng = np.random.default_rng(cfg.seed)
    problem.sample(rng)
    problem.check_exact_solution()
    problem.plan()
    causal = int(t_cfg.get("causal_chunks", 0) or 0)
    if causal and ctx.distributed:
        raise PinnConfigError("trainer.causal_chunks runs in one process; launch it without torchrun/several tasks")
    problem.set_causal(causal, float(t_cfg.get("causal_eps", 1.0)))
    tune_malloc()
    set_tf32(bool(t_cfg.get("tf32", False)))
    hessian = bool(cfg.get("analysis") and cfg.analysis.get("hessian_every"))
    problem.configure(t_cfg.get("compile", "auto"), calls_expected=total, double_backward=hessian)
    shards = distributed.Shards(ctx, problem)  # several ranks: each trains on its slice of the points
    shards.update()
    schedule = OptimizerSchedule(cfg.optimizer, trainable(net), total)
    term_names = [t.name for t in problem.terms]
    columns = ["step", "time_s", "loss", *[f"loss_{n}" for n in term_names], "lr", "rel_l2"]
    if problem.causal is not None:
        columns.append("causal_w_min")  # weight of the last time chunk: 1 once every earlier one is fitted
    ckpt_dir = run_dir / "checkpoints"
    config_dict = OmegaConf.to_container(cfg, resolve=True)

    history: list[dict] = []
    step, best, elapsed_before = 0, math.inf, 0.0
    undone_at = finish_at = None  # the step of an L-BFGS block a signal undid (this run / the checkpoint's)
    resume = resolve_resume(t_cfg.get("resume"), run_dir)
    refuse_used_run_dir(resume, run_dir)
    say_resume_plan(t_cfg.get("resume"), resume, ckpt_dir)
    if resume is not None:
        state = checkpoint.load(resume)
        _check_compatible(state, config_dict, resume)
        warn_changed_settings(state["config"], config_dict)
        try:
            net.load_state_dict(state["model"])
        except RuntimeError:
            raise PinnError(f"checkpoint {resume} does not match this network (network.* differs)") from None
        schedule.load_state_dict(state["optimizer"])
        problem.load_state(state["points"])
        shards.update()
        torch.set_rng_state(state["rng"]["torch"])
        rng.bit_generator.state = state["rng"]["numpy"]
        step, best, history = state["step"], state["best_rel_l2"], state["history"]
        elapsed_before = state.get("elapsed_s", 0.0)
        finish_at = state.get("lbfgs_undone_at")
        log.info("resumed from %s at step %d", resume, step)
        problem.expect_calls(total - step)  # trainer.compile=auto weighs the steps still ahead
        if ctx.is_main:  # the earlier segment's figures are in history.csv and the checkpoints; until this
            (run_dir / "metrics.json").unlink(missing_ok=True)  # run ends it is running, not preempted

    def snapshot(elapsed: float) -> dict:
        return {
            "model": net.state_dict(), "optimizer": schedule.state_dict(), "step": step,
            "rng": _rng_state(rng), "config": config_dict, "best_rel_l2": best, "history": history,
            "points": shards.state(), "equation": equation.name, "elapsed_s": elapsed,
            "lbfgs_undone_at": undone_at,
        }

    n_params = sum(p.numel() for p in trainable(net))
    log.info(
        "equation=%s inputs=%s network=%s params=%d device=%s precision=%s engines=%s",
        equation.name, ",".join(equation.inputs), net.describe(), n_params,
        setup.device, cfg.precision, ",".join(f"{t.name}:{t.engine}" for t in problem.terms),
    )
    progress = _Progress(total, bool(t_cfg.progress) and ctx.is_main, step)
    loss_fn = distributed.loss_function(problem, shards, setup.device)
    stopped_by = None
    status = "done"
    t0 = time.perf_counter()
    with _preemption_handler() as stop:
        # a block undone once runs to its end after the resume, so that signals more frequent than
        # a block cannot hold the run at one step
        interrupt = None if ctx.distributed else (lambda: stop.signal is not None and step != finish_at)
        try:
            while step < total:
                if schedule.phase(step) == "adam":
                    if resample_due(cfg, step):
                        problem.sample(rng, adaptive=True)
                        shards.update()
                    loss, parts = schedule.adam_step(loss_fn)
                    step += 1
                else:
                    chunk = steps_to_row(t_cfg, step, total)
                    problem.freeze_causal()
                    try:  # one process: a signal undoes the block (ranks of DDP must stay in step: they finish it)
                        done, loss, parts = schedule.lbfgs_steps(loss_fn, chunk, interrupt=interrupt)
                    except Interrupted:  # back at the block's start: save that, and a resume repeats the block
                        undone_at, stopped_by, status = step, signal.Signals(stop.signal).name, "preempted"
                        checkpoint.save(snapshot(elapsed_before + time.perf_counter() - t0), ckpt_dir / "last.pt")
                        break
                    if done == 0:
                        log.info("L-BFGS converged at step %d; stopping", step)
                        total = step
                    step += max(done, 0)
                is_last = step >= total
                signalled = distributed.agree(stop.signal)
                if row_due(t_cfg, step) or is_last or signalled:
                    lossv = loss.item()
                    now = time.perf_counter()
                    if not math.isfinite(lossv):
                        status = "diverged"
                        break
                    row = {"step": step, "time_s": round(elapsed_before + now - t0, 4), "loss": lossv,
                           "lr": schedule.current_lr(max(step - 1, 0)), "rel_l2": None}
                    row.update({f"loss_{n}": p.item() for n, p in zip(term_names, parts)})
                    if problem.causal is not None:
                        row["causal_w_min"] = problem.causal.last[-1].item()
                    if cfg.get("analysis") and cfg.analysis.get("hessian_every"):  # top Hessian eigenvalue
                        from .hessian import log_top_eigenvalue

                        log_top_eigenvalue(cfg, problem, history, row, columns)
                    if (step % t_cfg.eval_every == 0 or is_last) and ctx.is_main:
                        m = evaluator.metrics(net)
                        row["rel_l2"] = m["rel_l2"]
                        if m["rel_l2"] < best:
                            best = m["rel_l2"]
                            checkpoint.save(snapshot(elapsed_before + now - t0), ckpt_dir / "best.pt")
                    history.append(row)
                    progress.report(row)
                    if (step % t_cfg.checkpoint_every == 0 or is_last or signalled) and ctx.is_main:
                        checkpoint.save(snapshot(elapsed_before + now - t0), ckpt_dir / "last.pt")
                if signalled and not is_last:  # a signal during the last step: the run is done, not preempted
                    stopped_by = signal.Signals(signalled).name
                    status = "preempted"
                    break
        finally:
            progress.close()
    wall = elapsed_before + time.perf_counter() - t0
    unlogged_loss = None  # trainer.steps=0 logs no row: the global loss then, computed on every rank
    if not history and status == "done":
        with torch.no_grad():
            unlogged_loss = float(loss_fn()[0].item())
    if not ctx.is_main:  # rank 0 writes everything; the others return its metrics
        if status == "diverged":
            raise PinnError(f"training diverged at step {step} (loss is not finite)")
        metrics = distributed.share(None)
        stop.chain(signal.Signals[stopped_by] if stopped_by else None)
        return metrics
    _write_history(history, columns, run_dir / "history.csv")
    plots.plot_loss(history, term_names, run_dir / "loss_curve.png")
    if status == "diverged":
        raise PinnError(
            f"training diverged at step {step} (loss is not finite); {checkpoint.last_good(ckpt_dir)}"
        )
    metrics = evaluator.metrics(net)
    if not (ckpt_dir / "best.pt").exists() or metrics["rel_l2"] <= best:
        improved = metrics["rel_l2"] < best
        best = min(best, metrics["rel_l2"])
        checkpoint.save(snapshot(wall), ckpt_dir / "best.pt")
        if improved and (ckpt_dir / "last.pt").exists():  # the same model: its record of the best must agree
            checkpoint.save(snapshot(wall), ckpt_dir / "last.pt")
    if not (ckpt_dir / "last.pt").exists():
        checkpoint.save(snapshot(wall), ckpt_dir / "last.pt")
    final_loss = history[-1]["loss"] if history else unlogged_loss
    metrics.update({
        "steps": step, "wall_time_s": round(wall, 3), "n_params": n_params,
        "device": str(setup.device), "final_loss": final_loss, "equation": equation.name,
        "precision": cfg.precision, "status": status,
    })
    if stopped_by:
        metrics["stopped_by"] = stopped_by
    checkpoint.write_json(metrics, run_dir / "metrics.json")
    plots.plot_solution(
        *evaluator.plot_data(net),   # the plotting grid, NaN outside a disk/polygon
        equation.inputs, equation.outputs,
        f"{equation.name}: rel L2 {metrics['rel_l2']:.2e}, max |err| {metrics['max_abs_error']:.2e}",
        run_dir / "solution.png", time=equation.time,
    )
    distributed.share(metrics)
    stop.chain(signal.Signals[stopped_by] if stopped_by else None)
    return metrics


RESUME_FREE = {"trainer.steps", "trainer.resume", "trainer.log_every", "trainer.eval_every",
               "trainer.checkpoint_every", "trainer.progress", "trainer.compile",
               "trainer.ensemble_chunk"}  # meant to change on a resume


def changed_settings(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key old -> new`` for every leaf that differs between two resolved configs (keys a resume is
    meant to change, such as ``trainer.steps``, left out)."""
    out = []
    for key in sorted(set(old) & set(new), key=str):  # a key only one has: another pinn version's config
        path = f"{prefix}{key}"
        a, b = old[key], new[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_settings(a, b, f"{path}.")
        elif a != b and path not in RESUME_FREE:
            out.append(f"{path} {a} -> {b}")
    return out


def _check_compatible(state: dict, config: dict, path: Path) -> None:
    """Refuse a checkpoint from another equation or network shape, with one line."""
    old = state["config"]
    if old["equation"].get("_target_") != config["equation"].get("_target_"):
        raise PinnError(
            f"checkpoint {path} is for equation {state.get('equation')}, not {config['equation'].get('name')}"
        )
    defaults = {"fourier_features": 0, "fourier_sigma": 1.0, "residual": False}
    for key in ("name", "width", "depth", "activation", "fourier_features", "fourier_sigma", "residual"):
        if old["network"].get(key, defaults.get(key)) != config["network"].get(key, defaults.get(key)):
            raise PinnError(
                f"checkpoint {path} has network.{key}={old['network'].get(key)}, this run has {config['network'].get(key)}"
            )
