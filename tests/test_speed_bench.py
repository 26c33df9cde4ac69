"""The speed benchmark runs end to end (tiny sizes); compile policy and fallback of the loss."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import types

import pytest
import torch
from conftest import REPO

from pinn_cli import speed
from pinn_cli.errors import PinnConfigError
from pinn_cli.speed import CompiledLoss, compile_setting


def test_quick_bench_prints_a_parsable_json_line():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speed.py"), "--quick", "--threads", "1", "heat"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout.strip().splitlines()[-1])
    rows = {r["variant"]: r for r in data["results"]}
    floor = rows.pop(next(k for k in rows if k.startswith("GEMM floor (")))
    hot = rows.pop(next(k for k in rows if k.startswith("GEMM floor, hot")))
    assert hot["rel_l2"] is None and "shared tensors" in hot["note"]
    assert {"nested autograd", "pinn autograd", "pinn forward"} <= set(rows)
    for r in rows.values():
        assert r["median_ms"] > 0 and r["rel_l2"] > 0
    # the floor runs a subset of pinn forward's work (its matrix products, recorded from one step)
    assert floor["rel_l2"] is None and floor["min_ms"] < rows["pinn forward"]["min_ms"]
    assert "matrix products" in floor["note"] and floor["x_nested"] > rows["pinn forward"]["x_nested"]
    # same initial weights and points, same loss: the same network after the same steps
    assert rows["pinn forward"]["rel_l2"] == pytest.approx(rows["nested autograd"]["rel_l2"], rel=1e-3)
    assert rows["pinn autograd"]["max_dw_nested"] < 1e-6 and rows["pinn forward"]["max_dw_nested"] < 1e-6
    lo, hi = rows["pinn forward"]["x_nested_iqr"]
    assert lo <= rows["pinn forward"]["x_nested"] <= hi


def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("speed_bench", REPO / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["speed_bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_ratios_pair_the_rounds_and_a_drifting_control_warns():
    """A load burst in one round must not decide a ratio: each round's ratio uses only that round."""
    bench = _bench_module()
    ref, v = bench.Variant("nested autograd", None, None), bench.Variant("pinn autograd", None, None)
    ref.rounds = [[1.0, 1.0], [9.0, 9.0], [1.0, 1.0]]  # the middle round ran under load, for both
    v.rounds = [[0.5, 0.5], [4.5, 4.5], [0.5, 0.5]]
    assert bench.paired_ratio(ref, v) == (2.0, 2.0, 2.0)
    rows = [{"equation": "heat", "variant": "pinn autograd", "x_nested": 2.0}]
    assert "control ratio" in bench.noise_warning(rows)
    rows[0]["x_nested"] = 1.03
    assert bench.noise_warning(rows) is None


def test_bench_refuses_the_cpu_clock_with_several_threads():
    with pytest.raises(SystemExit):
        _bench_module().parse_args(["--clock", "cpu", "--threads", "2"])


def _loss_setup():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))

    def loss():
        total = (w ** 2).sum()
        return total, [total]

    return w, loss


def test_compile_failure_warns_once_and_stays_eager(monkeypatch, caplog):
    w, loss = _loss_setup()
    calls = []

    def broken(fn, **kwargs):
        calls.append(1)
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    compiled = CompiledLoss(loss, [w], "true", 10, torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="pinn"):
        values = [compiled()[0].item() for _ in range(3)]
    assert values == [5.0, 5.0, 5.0]
    assert len(calls) == 1 and compiled.active is None
    assert sum("torch.compile of the loss failed" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("calls_expected, compiles", [(50, False), (10**12, True)])
def test_auto_compiles_only_when_the_run_is_long(monkeypatch, calls_expected, compiles):
    w, loss = _loss_setup()
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append(kwargs) or fn)
    compiled = CompiledLoss(loss, [w], "auto", calls_expected, torch.device("cpu"))
    for _ in range(speed.AUTO_WARMUP_CALLS + 3):
        compiled()[0].backward()
    assert (compiled.active is not None) == compiles
    assert bool(seen) == compiles
    if compiles:
        assert seen[0]["mode"] is None  # CPU: default mode; CUDA would use reduce-overhead


@pytest.mark.parametrize("eager_s, compiled_s, stays", [(0.001, 0.004, False), (0.004, 0.001, True)])
def test_auto_keeps_compiled_only_when_its_calls_are_faster(monkeypatch, caplog, eager_s, compiled_s, stays):
    """After compiling, auto alternates compiled and eager calls and keeps the faster one."""
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ran = []
    clock = [0.0]  # a fake clock: a loaded machine cannot reorder the calls' times
    monkeypatch.setattr(speed, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def timed(tag: str, seconds: float):
        def loss():
            ran.append(tag)
            clock[0] += seconds
            total = (w ** 2).sum()
            return total, [total]
        return loss

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: timed("compiled", compiled_s))
    compiled = CompiledLoss(timed("eager", eager_s), [w], "auto", 10**12, torch.device("cpu"))
    n = speed.AUTO_WARMUP_CALLS
    with caplog.at_level(logging.INFO, logger="pinn"):
        for _ in range(6 * n):
            compiled()[0].backward()
    raced = ran[n + 1:n + 1 + 2 * n]  # after the eager warm-up and the compiling call (trial + call)
    assert raced.count("compiled") == raced.count("eager") == n
    assert (compiled.active is not None) == stays
    assert (compiled.paces["compiled"] < compiled.paces["eager"]) == stays
    assert set(ran[-n:]) == {"compiled" if stays else "eager"}
    assert any(("training goes on compiled" if stays else "in eager mode") in r.message for r in caplog.records)


def test_compile_setting_values():
    assert compile_setting(True) == "true" and compile_setting(False) == "false"
    assert compile_setting("reduce-overhead") == "reduce-overhead"
    with pytest.raises(PinnConfigError, match="trainer.compile"):
        compile_setting("sometimes")


def test_tune_malloc_is_harmless():
    assert speed.tune_malloc() in (True, False)


def test_tf32_switch():
    matmul = torch.backends.cuda.matmul

    def on() -> bool:
        return matmul.fp32_precision == "tf32" if hasattr(matmul, "fp32_precision") else matmul.allow_tf32

    speed.set_tf32(True)
    try:
        assert on()
    finally:
        speed.set_tf32(False)
    assert not on()


def test_lbfgs_bench_runs_both_optimizers_on_the_same_path():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "lbfgs.py"), "--quick", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["optimizer"] for r in data["results"]] == ["torch.optim.LBFGS", "pinn LBFGS"]
    assert all(r["iters"] == data["iters"] and r["median_ms"] > r["own_ms"] > 0 for r in data["results"])
    assert data["first_round_max_dw"] < 1e-10  # the same iterates, up to rounding
    assert data["direction_rel_diff"] < 1e-10 and data["ring_wrapped"]


def test_gemm_floor_replays_the_forward_and_backward_products_of_a_step():
    bench = _bench_module()
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(5, 2)
    source = bench.Variant("src", lambda: net(x).sum().backward(), net)
    floors = bench.gemm_floor_variants(source)
    assert source.steps_done == 1 and len(floors) == 2
    before = [p.detach().clone() for p in net.parameters()]
    for floor in floors:
        # 2 forward addmm; backward: dW2, dh1, dW1 (no input gradient for x)
        assert "the 5 matrix products (0.00 GFLOP)" in floor.note
        floor.step()  # the products on tensors of their own, then Adam on copies: the source's network stays
        assert floor.predict is None and all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    # the shared row keeps one tensor per distinct (shape, stride, dtype, device): fewer than the 12
    # tensor arguments of the 5 products (x alone is read twice: forward, and dW1 in the backward)
    shared = int(re.search(r"on (\d+) shared tensors", floors[1].note).group(1))
    assert 1 < shared < 12 and "of its own" in floors[0].note
