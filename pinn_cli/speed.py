"""Training-speed settings: glibc malloc tuning, TF32, and ``torch.compile`` of the loss with fallback."""
from __future__ import annotations

import ctypes
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger("pinn")

LossFn = Callable[[], tuple[torch.Tensor, list[torch.Tensor]]]
COMPILE_CHOICES = ("auto", "true", "false", "default", "reduce-overhead", "max-autotune")
# auto compiles once the measured eager pace projects a run this much longer than a cold compile.
# Measured cold compiles: 30-90 s on a 2-core CPU; 6-16 s on an H100 machine (16 cores), where the
# compiled step (reduce-overhead) ran 3.4-3.7x faster than the eager one (README, Speed)
COMPILE_COST_S = {"cpu": 60.0, "cuda": 20.0}
PAYBACK = {"cpu": 8.0, "cuda": 3.0}
AUTO_WARMUP_CALLS = 12


def tune_malloc() -> bool:
    """Keep freed tensor buffers in the glibc heap instead of returning them to the OS each step.

    Without this, a PINN step takes thousands of page faults re-mapping ~1 MB buffers (about 15% of a
    CPU step). Same effect as MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296;
    skipped when those are set, and on non-glibc systems. Returns whether it was applied.
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, (1 << 31) - 1))
    except (OSError, AttributeError):
        return False


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 tensor-core matmuls and convolutions on CUDA (off by default: accuracy)."""
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision"):  # torch >= 2.9
        matmul.fp32_precision = "tf32" if enabled else "ieee"
        if hasattr(conv, "fp32_precision"):
            conv.fp32_precision = "tf32" if enabled else "ieee"
    else:
        matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def compile_setting(value) -> str:
    """Normalise ``trainer.compile`` (bools from YAML included) to one of COMPILE_CHOICES."""
    from .errors import PinnConfigError

    text = {True: "true", False: "false", None: "false"}.get(value, str(value).lower())
    if text not in COMPILE_CHOICES:
        raise PinnConfigError(f"trainer.compile={value!r} is not known; choose from: {', '.join(COMPILE_CHOICES)}")
    return text


class CompiledLoss:
    """Calls ``torch.compile(fn)`` once it is enabled, else ``fn`` (the loss: total and terms).

    ``setting``: ``false`` never compiles; ``true`` (or a mode name) compiles at the first call;
    ``auto`` times the first eager calls and compiles only when the rest of the run, at that pace,
    is several times longer than a compile costs (so a short run is never slowed down); it then
    alternates compiled and eager calls for a while and keeps whichever is faster, so that load
    from other processes hits both alike. The mode is ``reduce-overhead`` (CUDA graphs) on CUDA
    and ``default`` elsewhere unless named. Any failure (at compile time or in the first
    backward) logs one warning and falls back to eager for good.
    """

    def __init__(self, fn: LossFn, params: Sequence[torch.Tensor], setting, calls_expected: int,
                 device: torch.device) -> None:
        self.fn, self.params = fn, list(params)
        self.setting = compile_setting(setting)
        self.device = device.type if device.type in COMPILE_COST_S else "cpu"
        named = self.setting not in ("auto", "true", "false")
        self.mode = self.setting if named else ("reduce-overhead" if device.type == "cuda" else "default")
        self.calls_expected = calls_expected
        self.calls = 0
        self.active: Callable | None = None
        self.decided = self.setting == "false"
        self._stamps: list[float] = []  # eager call times before compiling (auto)
        self._race: dict[str, list[float]] | None = None  # auto after compiling: s per call of each kind
        self._last: tuple[str, float] | None = None  # the kind and start of the previous raced call
        self._compiled_at = 0
        self.paces: dict[str, float] = {}  # auto: median s per call, eager and compiled, once raced

    def __call__(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not self.decided:
            self._decide()
        use = self.active
        if self._race is not None and use is not None and torch.is_grad_enabled():
            use = self._next_in_race()
        self.calls += 1
        if use is None or not torch.is_grad_enabled():  # no_grad would recompile: stay eager
            return self.fn()
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
            total, parts = use()
            return total.clone(), [p.clone() for p in parts]  # replays overwrite graph outputs
        return use()

    def _decide(self) -> None:
        if self.setting == "auto":
            if self.calls >= 2:  # the first two calls warm up
                self._stamps.append(time.perf_counter())
            if self.calls < AUTO_WARMUP_CALLS:
                return
            pace = (self._stamps[-1] - self._stamps[0]) / (len(self._stamps) - 1)
            projected = pace * max(self.calls_expected - self.calls, 0)
            self.decided = True
            if projected < PAYBACK[self.device] * COMPILE_COST_S[self.device]:
                return
            log.info("compiling the loss (%.0f s of eager steps ahead at %.1f ms/step)", projected, 1e3 * pace)
            self._race, self._compiled_at = {"compiled": [], "eager": []}, self.calls
        self.decided = True
        self.active = self._trial()

    def _next_in_race(self) -> Callable | None:
        """auto after compiling: the function for this call, compiled and eager in turn, each timed
        from its start to the next call's (its backward and the optimizer step included). After
        ``AUTO_WARMUP_CALLS`` calls of each, keeps compiled only if its median call is faster."""
        now = time.perf_counter()
        race = self._race
        if self._last is not None:
            race[self._last[0]].append(now - self._last[1])
        if min(len(v) for v in race.values()) >= AUTO_WARMUP_CALLS:
            self.paces = {k: statistics.median(v) for k, v in race.items()}
            self._race, self._last = None, None
            faster = self.paces["compiled"] < self.paces["eager"]
            log.info("compiled loss: %.1f ms/step, eager %.1f ms/step: training goes on %s",
                     1e3 * self.paces["compiled"], 1e3 * self.paces["eager"],
                     "compiled" if faster else "in eager mode")
            if not faster:
                self.active = None
            return self.active
        since = self.calls - self._compiled_at  # 0: the compiling call; 1: one untimed warm call
        kind = "compiled" if since % 2 == 0 else "eager"
        self._last = (kind, now) if since >= 2 else None
        return self.active if kind == "compiled" else None

    def _trial(self) -> Callable | None:
        """Compile and run one forward and backward; None (eager) with one warning if anything fails."""
        try:
            fn = torch.compile(self.fn, mode=None if self.mode == "default" else self.mode, dynamic=False)
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            total, _ = fn()
            torch.autograd.grad(total, self.params, allow_unused=True)
            return fn
        except Exception as err:  # noqa: BLE001 - any compiler failure means: stay eager
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            log.warning("torch.compile of the loss failed (%s: %s); training continues in eager mode",
                        type(err).__name__, first[:200])
            return None
