"""``pinn list``: the equations, domains, networks, samplers and optimizers available, one line each."""
from __future__ import annotations

from pathlib import Path

from ..paths import config_dir

GROUPS = ("equation", "domain", "network", "sampler", "optimizer")


NO_DESCRIPTION = "(no description: the file's first line should be a # comment saying what it is)"


def describe(path: Path) -> str:
    """The first comment line of a config file, which holds its one-line description."""
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return NO_DESCRIPTION


def entries(extra: list[Path] | tuple[Path, ...] = ()) -> dict[str, list[tuple[str, str]]]:
    """Each group's options: the shipped ones, then those in ``extra`` config directories (``-cd``)."""
    out: dict[str, list[tuple[str, str]]] = {}
    shadowed: list[tuple[str, str]] = []
    for g in GROUPS:
        found = {p.stem: describe(p) for p in sorted((config_dir() / g).glob("*.yaml"))}
        for root in extra:
            for p in sorted((root / g).glob("*.yaml")):
                if p.stem in found:  # Hydra finds the shipped config first: this one is never used
                    shadowed.append((f"{g}/{p.stem}", f"{root}: not used, the shipped {g}={p.stem} comes first; "
                                     "rename the file"))
                else:
                    found[p.stem] = f"{describe(p)} [{root}]"
        out[g] = list(found.items())
    if shadowed:
        out["shadowed"] = shadowed
    return out


def rows(extra: list[Path] | tuple[Path, ...] = ()) -> list[tuple[str, str, str]]:
    """(group, name, description) of every config option and of the notable keys."""
    from ..networks import ACTIVATIONS

    out = [(group, name, desc) for group, items in entries(extra).items() for name, desc in items]
    return out + [
        ("network.activation", ", ".join(ACTIVATIONS), "pointwise activations of mlp"),
        ("network.fourier_features", "0, m", "random Fourier-feature embedding of the inputs (m frequencies)"),
        ("network.residual", "false, true", "hidden layers as residual blocks h <- h + act(W h + b)"),
        ("sampler.adaptive", "none, rad", "resampled PDE points drawn where the residual is large (RAD)"),
        ("trainer.causal_chunks", "0, n", "causal weighting of the PDE residual over n time chunks"),
    ]


def main(argv: list[str]) -> None:
    """A table on a terminal; one tab-separated line per entry when piped (``pinn list | grep heat``)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="pinn list", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("-cd", "--config-dir", action="append", default=[], type=Path, metavar="DIR",
                        help="also list the options in this config directory (as `pinn train -cd DIR` sees them)")
    args = parser.parse_args(argv)
    for root in args.config_dir:
        if not root.is_dir():
            from ..errors import PinnError

            raise PinnError(f"--config-dir {root} is not a directory")
    table_rows = rows(args.config_dir)
    if not sys.stdout.isatty():
        for row in table_rows:
            print("\t".join(row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    for col in ("group", "name", "description"):
        table.add_column(col)
    last = None
    for group, name, desc in table_rows:
        if last is not None and group.split(".")[0] != last:
            table.add_section()
        table.add_row(group, name, desc)
        last = group.split(".")[0]
    Console().print(table)
