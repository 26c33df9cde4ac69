"""The short rich summary printed at the end of a run."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def print_summary(metrics: dict, run_dir: Path) -> None:
    table = Table(title=f"pinn: {metrics['equation']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("status", str(metrics.get("status", "done")))
    table.add_row("steps", str(metrics["steps"]))
    table.add_row("time", f"{metrics['wall_time_s']:.1f} s on {metrics['device']} ({metrics['precision']})")
    table.add_row("rel L2", f"{metrics['rel_l2']:.3e}")
    table.add_row("max |error|", f"{metrics['max_abs_error']:.3e}")
    Console().print(table)
    print(f"run dir: {run_dir}", flush=True)
