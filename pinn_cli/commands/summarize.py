"""``pinn summarize <multirun_dir>``: one table of every job of a sweep, summary.csv and summary.png."""
from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="pinn summarize",
        description="One table of every job of a sweep (sorted by rel L2), written to summary.csv "
                    "and summary.png (rel L2 against the swept values) in the multirun directory.",
    )
    parser.add_argument("multirun_dir", type=Path, help="a multirun directory, e.g. outputs/multirun/<date>/<time>")
    parser.add_argument("--no-plot", action="store_true", help="skip summary.png")
    args = parser.parse_args(argv)
    from ..summarize import summarize

    summarize(args.multirun_dir, make_plot=not args.no_plot)
