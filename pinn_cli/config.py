"""Checks on config values and the device/precision they name, each failing with one line."""
from __future__ import annotations

import torch
from omegaconf import DictConfig

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
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        need = "a non-negative number" if allow_zero else "a positive number"
        raise PinnConfigError(f"{key}={value!r} is invalid; it must be {need}")
    return float(value)


def choice(value, key: str, accepted) -> str:
    if value not in accepted:
        raise PinnConfigError(f"{key}={value!r} is not known; choose from: {', '.join(map(str, accepted))}")
    return value


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device must exist here."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
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
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise PinnConfigError(f"device={name} is not available here; use device=auto or device=cpu")
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
    if t.get("causal_chunks", 0):
        positive_float(t.get("causal_eps", 1.0), "trainer.causal_eps")
    positive_float(o.lr, "optimizer.lr")
    positive_int(o.get("adam_steps", 0), "optimizer.adam_steps", allow_zero=True)
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool):
        raise PinnConfigError(f"seed={cfg.seed!r} is invalid; it must be an integer")
    resolve_dtype(cfg.precision)
