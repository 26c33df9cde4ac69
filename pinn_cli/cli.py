"""``pinn <command> [args]``: pops the subcommand from argv, then hands the rest to it (Hydra for train)."""
from __future__ import annotations

import os
import re
import sys

from .errors import PinnError, SweepFailed, say_once

HELP = """usage: pinn <command> [options]   (pinn --version)

commands:
  train [overrides]   train a PINN (Hydra: key=value overrides, -m to sweep, --help, --cfg job)
  evaluate <run_dir>  reload a run's best checkpoint, recompute metrics, redraw plots
  summarize <dir>     one table of every job of a sweep (multirun directory)
  hessian <run_dir>   spectrum of the loss Hessian w.r.t. the network parameters
  list                equations, domains, networks, samplers and optimizers available

examples:
  pinn train                                   # 1D heat equation, default settings
  pinn train equation=poisson2d network.width=64
  pinn train -m equation=heat,poisson2d trainer.steps=100
  pinn train --help                            # every config group and key
"""


class _QuietJobErrors:
    """stderr minus Hydra's "Error executing job with overrides" line: a single run names its error itself,
    and the end of a failed sweep names every failed job with its overrides (Hydra's line named the first)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if text.startswith("Error executing job with overrides"):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def flags_first(argv: list[str]) -> list[str]:
    """Hydra's flags (with their values) ahead of the overrides: Hydra's argparse takes overrides in one
    run, so `pinn train equation=burgers -m seed=0,1` would stop at "unrecognized arguments". Anything
    unusual (a flag Hydra does not know, one missing its value) keeps the order given, for argparse
    to judge."""
    from hydra._internal.utils import get_args_parser

    actions = {o: a for a in get_args_parser()._actions for o in a.option_strings}
    flags: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        action = actions.get(arg.split("=", 1)[0] if arg.startswith("--") else arg)
        if action is None:
            if arg.startswith("-"):
                return argv
            rest.append(arg)
        elif "=" in arg or action.nargs == 0:
            flags.append(arg)
        elif action.nargs is None:  # a flag with a value: -cd DIR, --cfg job, -p PACKAGE
            if i + 1 >= len(argv):
                return argv
            flags += [arg, argv[i + 1]]
            i += 1
        elif i + 1 < len(argv) and argv[i + 1] in (action.choices or ()):  # --info defaults-tree
            flags += [arg, argv[i + 1]]
            i += 1
        else:  # a bare --info: its default value, so that the next token is not taken for one
            flags.append(f"{action.option_strings[0]}={action.const}")
        i += 1
    return flags + rest


def _commands() -> dict:
    from .commands import list as list_cmd

    def train(argv: list[str]) -> None:
        from .commands.train import main as train_main

        argv = flags_first(argv)
        sys.argv = [sys.argv[0], *argv]
        stderr = sys.stderr
        sys.stderr = _QuietJobErrors(stderr)
        try:
            train_main()
        finally:
            sys.stderr = stderr

    def lazy(module: str):
        def run(argv: list[str]) -> None:
            import importlib

            importlib.import_module(f"pinn_cli.commands.{module}").main(argv)

        return run

    return {"train": train, "evaluate": lazy("evaluate"), "summarize": lazy("summarize"),
            "hessian": lazy("hessian"), "list": list_cmd.main}


# Hydra plugins that come with pinn's `cluster` extra: their config groups are missing without it
PLUGIN_CONFIGS = {"hydra/launcher/joblib", "hydra/launcher/submitit_local", "hydra/launcher/submitit_slurm",
                  "hydra/sweeper/optuna"}
CLUSTER_EXTRA = "comes with the cluster extra: pip install 'pinn-cli[cluster]' (make install has it)"


def _one_line(err: BaseException) -> str:
    """A one-line message for a Hydra/OmegaConf error (these are multi-line by default)."""
    text = str(err)
    missing = re.search(r"Could not (?:find|load) '([^']+)'", text)
    if missing:
        group, _, name = missing.group(1).rpartition("/")
        if missing.group(1) in PLUGIN_CONFIGS:
            return f"Hydra's {group}={name} is not installed: it {CLUSTER_EXTRA}"
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        if group and options:
            return f"{group}={name!r} is not known; choose from: {', '.join(options)}"
        return f"config {missing.group(1)!r} not found"
    primary = re.search(r"Cannot find primary config '([^']+)'", text)
    if primary:
        paths = re.findall(r"path=file://(\S+)", text)
        where = f" in {', '.join(paths)}" if paths else ""
        return f"config {primary.group(1)!r} (--config-name) not found{where}"
    override = re.search(r"Could not override '([^']+)'", text)
    if override:  # a typo such as trainer.stpes=10: Hydra's line would advise +trainer.stpes=10
        from .config import misspelt_key
        from .paths import config_dir

        line = misspelt_key(override.group(1), config_dir())
        if line:
            return line
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:2]) if lines else type(err).__name__


def error_line(err: BaseException) -> tuple[str, int]:
    """The one line that names ``err``, and the exit code: 2 for bad input (pinn's own checks, Hydra's
    and OmegaConf's config errors), 1 for anything else, whose line points to the traceback."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, PinnError):
        return str(err), 2
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        return _one_line(err), 2
    return f"{type(err).__name__}: {_one_line(err)} (set HYDRA_FULL_ERROR=1 for the traceback)", 1


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``pinn`` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from . import __version__

        print(f"pinn {__version__}")
        sys.exit(0)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP, end="")
        sys.exit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    commands = _commands()
    if command not in commands:
        print(f"pinn: unknown command {command!r}; choose from: {', '.join(commands)}", file=sys.stderr)
        sys.exit(2)
    user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        commands[command](rest)
    except SweepFailed as failed:
        if user_full_error:
            raise
        reasons = [(label, *error_line(err)) for label, err in failed.jobs]
        say_once("\n".join(f"pinn {command}: error: {label}: {line}" for label, line, _ in reasons))
        sys.exit(1 if any(code == 1 for _, _, code in reasons) else 2)
    except PinnError as err:
        if user_full_error:
            raise
        say_once(f"pinn {command}: error: {err}")
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"pinn {command}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:  # `pinn list | head`: the reader stopped early, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as err:
        if user_full_error:
            raise
        line, code = error_line(err)
        say_once(f"pinn {command}: error: {line}")
        sys.exit(code)
