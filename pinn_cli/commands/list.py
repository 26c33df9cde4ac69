"""``pinn list``: the equations, domains, networks, samplers and optimizers available, one line each."""
from __future__ import annotations

from pathlib import Path

from ..paths import config_dir

GROUPS = ("equation", "domain", "network", "sampler", "optimizer")


def describe(path: Path) -> str:
    """The first comment line of a config file, which holds its one-line description."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def entries() -> dict[str, list[tuple[str, str]]]:
    root = config_dir()
    return {g: [(p.stem, describe(p)) for p in sorted((root / g).glob("*.yaml"))] for g in GROUPS}


def main(argv: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..networks import ACTIVATIONS

    table = Table(show_header=True, header_style="bold")
    for col in ("group", "name", "description"):
        table.add_column(col)
    for group, items in entries().items():
        for name, desc in items:
            table.add_row(group, name, desc)
        table.add_section()
    table.add_row("network.activation", ", ".join(ACTIVATIONS), "pointwise activations of mlp")
    table.add_row("network.fourier_features", "0, m", "random Fourier-feature embedding of the inputs (m frequencies)")
    table.add_row("network.residual", "false, true", "hidden layers as residual blocks h <- h + act(W h + b)")
    table.add_row("sampler.adaptive", "none, rad", "resampled PDE points drawn where the residual is large (RAD)")
    table.add_row("trainer.causal_chunks", "0, n", "causal weighting of the PDE residual over n time chunks")
    Console().print(table)
