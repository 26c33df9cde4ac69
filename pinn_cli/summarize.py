"""One table of every job of a sweep (a Hydra multirun directory): overrides, errors, time, status.

A job is any folder under the multirun directory holding ``.hydra/overrides.yaml`` (so any
``hydra.sweep.subdir`` layout works). Its status comes from what it left behind:

- ``done`` (or ``preempted``): ``metrics.json`` exists; its ``status`` is shown;
- ``failed``: no ``metrics.json`` and ``train.log`` has an ERROR line (shown as the job's note);
- ``running``: neither yet (the note gives the last logged step). A job killed without a trace
  (SIGKILL, a lost node) also looks like this.
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import PinnError

_ERROR = re.compile(r"\[ERROR\] - (.*)$")
_STEP = re.compile(r"\] - step (\d+) loss (\S+)(?: rel_l2 (\S+))?")
METRIC_COLUMNS = ("rel_l2", "max_abs_error", "rmse", "steps", "wall_time_s", "final_loss")
_ORDER = {"done": 0, "preempted": 1, "running": 2, "failed": 3}


@dataclass
class Job:
    """One job of a sweep: where it ran, its overrides and what it reported."""

    name: str
    path: Path
    overrides: dict[str, str]
    status: str
    metrics: dict = field(default_factory=dict)
    note: str = ""

    @property
    def rel_l2(self) -> float | None:
        value = self.metrics.get("rel_l2")
        return float(value) if isinstance(value, (int, float)) else None


def _split_override(text: str) -> tuple[str, str]:
    key, _, value = str(text).partition("=")
    return key.lstrip("+~"), value


def _read_log(path: Path) -> tuple[str | None, int | None, str]:
    """(last ERROR message, last logged step, that step's line in short) from a job's train.log."""
    if not path.is_file():
        return None, None, ""
    error, step, last = None, None, ""
    for line in path.read_text(errors="replace").splitlines():
        m = _ERROR.search(line)
        if m:
            error = m.group(1).strip()
            continue
        s = _STEP.search(line)
        if s:
            step = int(s.group(1))
            last = f"step {s.group(1)}, loss {s.group(2)}" + (f", rel L2 {s.group(3)}" if s.group(3) else "")
    return error, step, last


def load_job(job_dir: Path, root: Path) -> Job:
    try:
        raw = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or []
    except (OSError, yaml.YAMLError):
        raw = []
    overrides = dict(_split_override(o) for o in raw)
    name = str(job_dir.relative_to(root)) if job_dir != root else job_dir.name
    logs = sorted(job_dir.glob("*.log"))  # train.log (Hydra names it after the job)
    log_path = job_dir / "train.log" if (job_dir / "train.log").is_file() or not logs else logs[0]
    error, step, last = _read_log(log_path)
    metrics_path = job_dir / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            return Job(name, job_dir, overrides, "failed", {}, f"metrics.json unreadable ({type(err).__name__})")
        status = str(metrics.get("status", "done"))
        note = f"stopped by {metrics['stopped_by']}" if metrics.get("stopped_by") else ""
        return Job(name, job_dir, overrides, status, metrics, note)
    metrics = {} if step is None else {"steps": step}
    if error:
        return Job(name, job_dir, overrides, "failed", metrics, error)
    return Job(name, job_dir, overrides, "running", metrics, last or "no step logged yet")


def find_jobs(root: Path) -> list[Job]:
    """Every job under ``root`` (a multirun directory, or one run directory)."""
    root = Path(root)
    if not root.is_dir():
        raise PinnError(f"{root} is not a directory; give a multirun directory (outputs/multirun/<date>/<time>)")
    dirs = sorted({p.parent.parent for p in root.rglob(".hydra/overrides.yaml")
                   if ".submitit" not in p.parts}, key=lambda p: _natural(str(p.relative_to(root))))
    if not dirs:
        raise PinnError(f"no runs under {root} (a run folder holds .hydra/overrides.yaml)")
    return [load_job(d, root) for d in dirs]


def _natural(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def swept_keys(jobs: list[Job]) -> tuple[list[str], dict[str, str]]:
    """Keys whose value differs between jobs (in first-seen order), and the overrides all jobs share."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    swept = [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]
    common = {k: jobs[0].overrides[k] for k in keys if k not in swept and k in jobs[0].overrides}
    return swept, common


def sort_jobs(jobs: list[Job]) -> list[Job]:
    """Finished jobs by rel L2 (best first), then preempted, running and failed ones."""
    return sorted(jobs, key=lambda j: (_ORDER.get(j.status, 2), j.rel_l2 if j.rel_l2 is not None else math.inf,
                                       _natural(j.name)))


def write_csv(jobs: list[Job], path: Path) -> None:
    swept, common = swept_keys(jobs)
    keys = swept + list(common)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["job", "status", *keys, *METRIC_COLUMNS, "note", "path"])
        for j in jobs:
            writer.writerow([j.name, j.status, *[j.overrides.get(k, "") for k in keys],
                             *[j.metrics.get(c, "") for c in METRIC_COLUMNS], j.note, str(j.path)])


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def plot(jobs: list[Job], path: Path) -> bool:
    """``summary.png``: rel L2 against each swept value (one panel per swept key; one line per setting
    of the other swept keys). Returns False when no job has finished (nothing to plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [j for j in jobs if j.rel_l2 is not None and j.rel_l2 > 0]
    if not done:
        return False
    swept, _ = swept_keys(jobs)
    panels = swept or ["job"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 0.8, 3.6), squeeze=False)
    for ax, key in zip(axes[0], panels):
        values = [j.overrides.get(key, "") if key != "job" else j.name for j in done]
        numeric = [_number(v) for v in values]
        is_num = key != "job" and all(v is not None for v in numeric)
        if is_num:
            xs = numeric
            positive = [x for x in xs if x > 0]
            if len(positive) == len(xs) and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
        else:
            labels = sorted(set(values), key=_natural)
            xs = [labels.index(v) for v in values]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 4 else 0)
        others = [k for k in swept if k != key]
        groups: dict[tuple, list] = {}
        for j, x in zip(done, xs):
            groups.setdefault(tuple(j.overrides.get(k, "") for k in others), []).append((x, j.rel_l2))
        for group, pts in sorted(groups.items(), key=lambda kv: [_natural(v) for v in kv[0]]):
            pts.sort()
            label = ", ".join(f"{k}={v}" for k, v in zip(others, group)) or None
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
        ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("rel L2")
        ax.grid(True, which="both", alpha=0.3)
        if others and len(groups) <= 8:
            ax.legend(fontsize=7)
    left_out = len(jobs) - len(done)
    fig.suptitle(f"rel L2 of {len(done)} jobs" + (f" ({left_out} failed or running: not shown)" if left_out else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def render(jobs: list[Job], root: Path, console=None) -> None:
    """Print the rich table of ``jobs`` (already sorted)."""
    import sys

    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 200)
    swept, common = swept_keys(jobs)
    counts = {s: sum(j.status == s for j in jobs) for s in dict.fromkeys(j.status for j in jobs)}
    title = f"{root}: {len(jobs)} jobs (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")"
    table = Table(title=title, title_justify="left")
    table.add_column("job", style="bold")
    for key in swept or ["overrides"]:
        table.add_column(key)
    for name in ("rel L2", "max |error|", "steps", "time (s)"):
        table.add_column(name, justify="right")
    table.add_column("status")
    table.add_column("note", overflow="fold")
    style = {"done": "green", "preempted": "yellow", "running": "cyan", "failed": "red"}
    for j in jobs:
        cells = [j.overrides.get(k, "") for k in swept] if swept else [" ".join(f"{k}={v}" for k, v in j.overrides.items())]
        table.add_row(
            j.name, *cells, _fmt(j.metrics.get("rel_l2"), ".3e"), _fmt(j.metrics.get("max_abs_error"), ".3e"),
            _fmt(j.metrics.get("steps"), "d"), _fmt(j.metrics.get("wall_time_s"), ".1f"),
            f"[{style.get(j.status, 'white')}]{j.status}[/]", j.note,
        )
    console.print(table)
    if common and swept:
        console.print("all jobs: " + " ".join(f"{k}={v}" for k, v in common.items()), soft_wrap=True)


def best_of_optuna(root: Path) -> str | None:
    """The Optuna sweeper's ``optimization_results.yaml`` (best params and value), as one line."""
    path = root / "optimization_results.yaml"
    if not path.is_file():
        return None
    try:
        res = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None
    params = " ".join(f"{k}={v}" for k, v in (res.get("best_params") or {}).items())
    return f"optuna best: {params} -> {res.get('best_value')}"


def summarize(root: Path, make_plot: bool = True) -> list[Job]:
    """Table on stdout, ``summary.csv`` (and ``summary.png``) in ``root``; returns the sorted jobs."""
    root = Path(root)
    jobs = sort_jobs(find_jobs(root))
    render(jobs, root)
    best = best_of_optuna(root)
    if best:
        print(best)
    write_csv(jobs, root / "summary.csv")
    wrote = [root / "summary.csv"]
    if make_plot and plot(jobs, root / "summary.png"):
        wrote.append(root / "summary.png")
    print("wrote " + ", ".join(str(p) for p in wrote), flush=True)
    return jobs
