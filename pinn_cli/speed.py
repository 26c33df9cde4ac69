"""Training-speed settings: glibc malloc tuning, TF32, and ``torch.compile`` of the loss with fallback."""
from __future__ import annotations

import ctypes
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger("pinn")

LossFn = Callable[[], tuple[torch.Tensor, list[torch.Tensor]]]
COMPILE_CHOICES = ("auto", "true", "false", "default", "reduce-overhead", "max-autotune")
# auto compiles once the measured eager pace projects a run this much longer than a cold compile
COMPILE_COST_S = {"cpu": 60.0, "cuda": 40.0}
PAYBACK = {"cpu": 8.0, "cuda": 4.0}
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
    is several times longer than a compile costs (so a short run is never slowed down), then times
    the compiled calls the same way and goes back to eager if they are slower. The mode is
    ``reduce-overhead`` (CUDA graphs) on CUDA and ``default`` elsewhere unless named. Any failure
    (at compile time or in the first backward) logs one warning and falls back to eager for good.
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
        self._stamps: list[float] = []  # call times in the window being timed
        self.eager_pace: float | None = None  # fastest s per call, timed by auto before compiling
        self.compiled_pace: float | None = None  # fastest s per call, timed by auto after compiling
        self._compiled_at = 0

    def __call__(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if not self.decided:
            self._decide()
        elif self.eager_pace is not None and self.compiled_pace is None and self.active is not None:
            self._compare()
        self.calls += 1
        if self.active is None or not torch.is_grad_enabled():  # no_grad would recompile: stay eager
            return self.fn()
        if self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
            total, parts = self.active()
            return total.clone(), [p.clone() for p in parts]  # replays overwrite graph outputs
        return self.active()

    def _timed(self, since: int) -> list[float] | None:
        """Call-to-call intervals once ``AUTO_WARMUP_CALLS`` calls have passed (the first two untimed)."""
        if since >= 2:
            self._stamps.append(time.perf_counter())
        if since < AUTO_WARMUP_CALLS:
            return None
        stamps, self._stamps = self._stamps, []
        return [b - a for a, b in zip(stamps, stamps[1:])]

    def _decide(self) -> None:
        if self.setting == "auto":
            gaps = self._timed(self.calls)
            if gaps is None:
                return
            projected = sum(gaps) / len(gaps) * max(self.calls_expected - self.calls, 0)
            self.decided = True
            if projected < PAYBACK[self.device] * COMPILE_COST_S[self.device]:
                return
            self.eager_pace, self._compiled_at = min(gaps), self.calls + 1
            log.info("compiling the loss (%.0f s of eager steps ahead at %.1f ms/step)",
                     projected, 1e3 * sum(gaps) / len(gaps))
        self.decided = True
        self.active = self._trial()

    def _compare(self) -> None:
        """auto: time as many compiled calls as eager ones; stay compiled only if its fastest call is faster.

        The fastest call, not the mean, so that a burst of load from other processes during one
        window cannot decide it."""
        gaps = self._timed(self.calls - self._compiled_at)
        if gaps is None:
            return
        self.compiled_pace = min(gaps)
        if self.compiled_pace >= self.eager_pace:
            log.info("compiled loss ran at %.1f ms/step against %.1f eager: training goes on in eager mode",
                     1e3 * self.compiled_pace, 1e3 * self.eager_pace)
            self.active = None
        else:
            log.info("compiled loss: %.1f ms/step (eager %.1f)", 1e3 * self.compiled_pace, 1e3 * self.eager_pace)

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
