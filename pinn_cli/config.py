"""Checks on config values and the device/precision they name, each failing with one line."""
from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import PinnConfigError

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


def positive_int(value, key: str, allow_zero: bool = False) -> int:
    """``value`` as an int > 0 (or >= 0), else a one-line error naming ``key``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        need = "a non-negative integer" if allow_zero else "a positive integer"
        raise PinnConfigError(f"{key}={value!r} is invalid; it must be {need}")
    return value


def positive_float(value, key: str, allow_zero: bool = False) -> float:
    """``value`` as a float > 0 (or >= 0), else a one-line error naming ``key``."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value >= 0 if allow_zero else value > 0))
    if not ok:
        need = "a finite non-negative number" if allow_zero else "a finite positive number"
        raise PinnConfigError(f"{key}={value!r} is invalid; it must be {need}")
    return float(value)


def choice(value, key: str, accepted) -> str:
    if value not in accepted:
        raise PinnConfigError(f"{key}={value!r} is not known; choose from: {', '.join(map(str, accepted))}")
    return value


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str, dtype: torch.dtype | None = None) -> torch.device:
    """``auto`` picks cuda, then mps (not for float64, which MPS lacks), then cpu; an explicit device
    must exist here and hold ``dtype``."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available() and dtype != torch.float64:
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise PinnConfigError(f"device={name!r} is not a device; choose from: auto, cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PinnConfigError(f"device={name} is not available: no CUDA GPU here; use device=auto or device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PinnConfigError(
                f"device={name} is not available: {torch.cuda.device_count()} CUDA device(s) visible"
            )
    elif dev.type == "mps":
        if not _mps_available():
            raise PinnConfigError(f"device={name} is not available here; use device=auto or device=cpu")
        if dtype == torch.float64:
            raise PinnConfigError(f"device={name} has no float64; add precision=float32, or use device=cpu")
    elif dev.type != "cpu":
        raise PinnConfigError(f"device={name!r} is not supported; choose from: auto, cpu, cuda, cuda:N, mps")
    return dev


def resolve_dtype(name: str) -> torch.dtype:
    return PRECISIONS[choice(name, "precision", PRECISIONS)]


def validate(cfg: DictConfig) -> None:
    """Check the run's scalar settings up front so a bad value fails before anything is written."""
    s, t, o = cfg.sampler, cfg.trainer, cfg.optimizer
    positive_int(s.n_interior, "sampler.n_interior")
    positive_int(s.n_boundary, "sampler.n_boundary")
    positive_int(s.n_initial, "sampler.n_initial")
    positive_int(s.resample_every, "sampler.resample_every", allow_zero=True)
    positive_int(t.steps, "trainer.steps", allow_zero=True)
    for key in ("log_every", "eval_every", "checkpoint_every"):
        positive_int(t[key], f"trainer.{key}")
    positive_int(t.eval_points, "trainer.eval_points")
    positive_int(t.get("causal_chunks", 0), "trainer.causal_chunks", allow_zero=True)
    positive_float(t.get("causal_eps", 1.0), "trainer.causal_eps")
    for key in ("progress", "tf32"):
        if not isinstance(t.get(key, False), bool):
            raise PinnConfigError(f"trainer.{key}={t.get(key)!r} is invalid; it must be true or false")
    positive_int((cfg.get("analysis") or {}).get("hessian_every", 0) or 0, "analysis.hessian_every", allow_zero=True)
    positive_float(o.lr, "optimizer.lr")
    positive_int(o.get("adam_steps", 0), "optimizer.adam_steps", allow_zero=True)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or not 0 <= cfg.seed < 2**63:
        raise PinnConfigError(f"seed={cfg.seed!r} is invalid; it must be an integer from 0 to 2**63 - 1")
    resolve_dtype(cfg.precision)


CHECKED_SECTIONS = ("trainer", "sampler", "network", "optimizer", "analysis")
GROUPS = ("equation", "domain", "network", "sampler", "optimizer")


def _paths(node, prefix: str) -> set[str]:
    """Dotted paths of every key under a config node (lists are leaves)."""
    out: set[str] = set()
    if isinstance(node, DictConfig):
        for key in node:
            if key == "defaults":
                continue
            path = f"{prefix}.{key}" if prefix else str(key)
            out.add(path)
            out |= _paths(node._get_node(key), path)
    return out


def known_keys(root: Path) -> set[str]:
    """Every key a run config may hold in the checked sections and at the top: those that
    ``train.yaml``, the options of the network, optimizer and sampler groups and the
    ``# @package _global_`` files (tuning, hparams_search) define."""
    train = OmegaConf.load(root / "train.yaml")
    known = {k for k in train if k != "defaults"} | set(GROUPS) | _paths(train, "")
    for group in ("network", "optimizer", "sampler"):
        for path in (root / group).glob("*.yaml"):
            known |= _paths(OmegaConf.load(path), group)
    for group in ("tuning", "hparams_search"):
        for path in (root / group).glob("*.yaml"):
            node = OmegaConf.load(path)
            known |= {p for s in CHECKED_SECTIONS if s in node for p in _paths(node._get_node(s), s)}
    return known


def check_keys(cfg: DictConfig, root: Path) -> None:
    """A key nobody reads (``+trainer.stpes=10``) is an error, not a silently ignored typo."""
    known = known_keys(root)
    given = {str(k) for k in cfg} | {p for s in CHECKED_SECTIONS if s in cfg for p in _paths(cfg._get_node(s), s)}
    for key in sorted(given - known - {"hydra"}):
        raise PinnConfigError(unknown_key(key, known))


def unknown_key(key: str, known: set[str]) -> str:
    """The line for a key nobody reads: its section's keys, and the nearest as a guess."""
    section, _, name = key.rpartition(".")
    peers = sorted(k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section)
    hint = did_you_mean(name, peers, f"{section}." if section else "")
    where = f"a key of {section}" if section else "a top-level key"
    return f"{key} is not {where}; {hint}known: {', '.join(peers)}"


def did_you_mean(name: str, peers: Sequence[str], prefix: str = "") -> str:
    """``"did you mean <prefix><nearest peer>? "``, or ``""`` when no peer is close to ``name``."""
    near = difflib.get_close_matches(name, list(peers), n=1)
    return f"did you mean {prefix}{near[0]}? " if near else ""


def _params_names(override) -> list[str]:
    """The param names a parsed ``equation.params.NAME=...`` or ``equation.params={NAME: ...}`` override
    sets; none for any other key."""
    if override.package:
        return []
    if override.key_or_group.startswith("equation.params."):
        return [override.key_or_group.removeprefix("equation.params.")]
    if override.key_or_group == "equation.params" and isinstance(override.value(), dict):
        return list(map(str, override.value()))
    return []


def _parsed(overrides: Sequence[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(overrides))


def added_params(overrides: Sequence[str], force: bool = False) -> list[str]:
    """The names that ``+equation.params.NAME=...`` (or ``+equation.params={NAME: ...}``) adds on the
    command line. Hydra refuses ``+`` for a key the composed config already has, so none of these is
    declared by the equation's files. With ``force``, the names ``++`` sets instead: it adds a key or
    overrides one, so whether the files declare it takes another composition (:func:`declared_params`)."""
    from hydra.core.override_parser.types import OverrideType

    kind = OverrideType.FORCE_ADD if force else OverrideType.ADD
    return [n for o in _parsed(overrides) if o.type == kind for n in _params_names(o)]


def without_forced_params(overrides: Sequence[str]) -> list[str]:
    """``overrides`` minus the ``++equation.params...`` ones."""
    from hydra.core.override_parser.types import OverrideType

    return [text for text, o in zip(overrides, _parsed(overrides))
            if not (o.type == OverrideType.FORCE_ADD and _params_names(o))]


def declared_params(config_name: str, overrides: Sequence[str]) -> set[str] | None:
    """The keys of ``equation.params`` in config ``config_name`` composed with ``overrides`` minus the
    ``++equation.params...`` ones: the params the config has without them (the equation's files, a
    global config, a plain or ``+`` override). Uses Hydra's compose API, so Hydra must be initialised
    (it is inside ``pinn train``: the same search path, ``-cd`` and ``hydra.searchpath`` included).
    None when that composition fails (say, a later override of a key only the ``++`` adds): then
    nothing is known, and nothing is refused."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = compose(config_name, overrides=without_forced_params(overrides))
    except (HydraException, OmegaConfBaseException, ValueError):
        return None
    params = OmegaConf.select(cfg, "equation.params")
    return set(map(str, params)) if isinstance(params, DictConfig) else set()


def check_added_params(cfg: DictConfig, added: Sequence[str], forced: Sequence[str] = (),
                       declared: Callable[[], set[str] | None] = lambda: None) -> None:
    """Refuse a param of a YAML equation that the command line adds (``+equation.params.alpah=0.1``)
    while nothing uses it: no expression of the equation names it and no interpolation of the config
    mentions it (absolute or relative), so its value could change nothing and it is a typo. A param the
    equation's own file declares is never refused (it is not in ``added``), nor is one added that an
    expression needs.

    ``forced`` are the names ``++`` sets (add or override); one that nothing uses is refused on the same
    rule unless ``declared()`` (the params the config has without the ``++`` overrides, None when that is
    unknown) holds it. ``declared`` composes the config again, so it is called only for such a name."""
    if not added and not forced:
        return
    from .equations.custom import Custom
    from .training import build_equation

    eq = build_equation(cfg.equation)
    if not isinstance(eq, Custom):
        return
    text = OmegaConf.to_yaml(cfg)
    # any interpolation naming it, absolute (${equation.params.k}) or relative (${.k}), counts as a use
    unused = {n for n in eq.unused_params() if not re.search(rf"\$\{{[^}}]*(?<![\w-]){re.escape(n)}(?![\w-])", text)}
    wrong = [n for n in added if n in unused]
    suspects = [n for n in forced if n in unused]
    if suspects and not wrong:
        have = declared()
        wrong = [n for n in suspects if have is not None and n not in have]
    if wrong:
        known = [k for k in eq.values if k not in wrong]
        raise PinnConfigError(
            f"equation.params.{wrong[0]} is not a parameter of equation {eq.name} (no expression uses it); "
            f"{did_you_mean(wrong[0], known, 'equation.params.')}its params: {', '.join(known) or 'none'}"
        )


def misspelt_key(key: str, root: Path) -> str | None:
    """For Hydra's "Could not override 'trainer.stpes'" (a key the config lacks, given without +): the
    line naming the section's keys and the nearest, where the key sits in a checked section (there a
    + would be refused as well, so Hydra's advice to add one misleads)."""
    if key.partition(".")[0] not in CHECKED_SECTIONS:
        return None
    known = known_keys(root)
    return None if key in known else unknown_key(key, known)  # known: another option of the group has it
