"""CUDA paths: every equation on the GPU against the CPU, CUDA-graph compile against eager, TF32.

Skipped where no GPU is visible (CI); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EQUATIONS, make_cfg

from pinn_cli.speed import set_tf32
from pinn_cli.training import build

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SMALL = ("precision=float64", "network.width=16", "network.depth=2", "sampler.n_interior=64",
         "sampler.n_boundary=16", "sampler.n_initial=16")


def _loss_and_grads(equation: str, device: str, engine: str) -> list[torch.Tensor]:
    setup = build(make_cfg(f"equation={equation}", f"device={device}", f"derivatives={engine}", *SMALL))
    setup.problem.sample(np.random.default_rng(0))
    setup.problem.plan()
    total, parts = setup.problem.loss()
    params = [p for p in setup.net.parameters() if p.requires_grad]  # wave's network has fixed ones
    grads = torch.autograd.grad(total, params, allow_unused=True)
    return [t.detach().cpu() for t in (total, *parts, *(g for g in grads if g is not None))]


@pytest.mark.parametrize("engine", ["forward", "autograd"])
@pytest.mark.parametrize("equation", [e for e in EQUATIONS if e != "custom"])
def test_every_equation_gives_the_cpu_loss_on_cuda(equation, engine):
    """Every term runs on the GPU and planning copes with points there (a plan-time probe once mixed
    CPU field values with GPU points, so poisson2d and every residual reading the coordinates failed)."""
    cpu, cuda = _loss_and_grads(equation, "cpu", engine), _loss_and_grads(equation, "cuda", engine)
    assert len(cpu) == len(cuda)
    for a, b in zip(cpu, cuda):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_cuda_graph_compile_takes_the_eager_steps():
    """``trainer.compile=true`` on CUDA is mode reduce-overhead: replayed graphs, same Adam steps."""
    weights = {}
    for setting in ("false", "true"):
        setup = build(make_cfg("equation=burgers", "device=cuda", *SMALL))
        setup.problem.sample(np.random.default_rng(0))
        setup.problem.plan()
        setup.problem.configure(setting)
        params = list(setup.net.parameters())
        opt = torch.optim.Adam(params, lr=1e-3)
        for _ in range(6):
            opt.zero_grad(set_to_none=True)
            setup.problem.loss()[0].backward()
            opt.step()
        assert setup.problem.compiled == (setting == "true")
        assert setting == "false" or setup.problem._compiled.mode == "reduce-overhead"
        weights[setting] = [p.detach().cpu().clone() for p in params]
    for a, b in zip(weights["false"], weights["true"]):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)


def test_tf32_switch():
    set_tf32(True)
    try:
        a = torch.randn(256, 256, device="cuda")
        tf32 = (a @ a - (a.double() @ a.double()).float()).abs().max()
    finally:
        set_tf32(False)
    ieee = (a @ a - (a.double() @ a.double()).float()).abs().max()
    assert ieee < 1e-3 < tf32  # TF32 keeps a 10-bit mantissa: errors ~1e-2 at this size


def test_an_ensembles_lbfgs_history_resumes_onto_the_gpu():
    """Checkpoints load onto the CPU; the batched L-BFGS history must follow the parameters back."""
    from torch.utils._pytree import tree_map

    from pinn_cli.ensemble import BatchedLBFGS

    a = torch.tensor([[1.0, 10.0, 100.0], [2.0, 3.0, 50.0]], dtype=torch.float64, device="cuda")
    x = torch.ones(2, 3, dtype=torch.float64, device="cuda", requires_grad=True)

    def loss():
        r = (a * (x - 0.3) ** 2).sum(1)
        return r, r[:, None]

    opt = BatchedLBFGS([x], 2, history_size=5, start_loss=10.0)
    for _ in range(3):
        opt.step(loss)
    saved = tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, opt.state_dict())
    resumed = BatchedLBFGS([x], 2, history_size=5, start_loss=10.0)
    resumed.load_state_dict(saved)
    for _ in range(10):
        resumed.step(loss)
    assert float(loss()[0].detach().max()) < 1e-8  # 1.5e-10 on the CPU


def test_the_fused_forward_engine_takes_one_block_on_the_gpu(monkeypatch):
    """CPU-cache blocking would repeat every kernel launch of a step once per block of points."""
    from pinn_cli import taylor

    seen, real = [], taylor._blocks
    monkeypatch.setattr(taylor, "_blocks", lambda *a: seen.append(a) or real(*a))
    setup = build(make_cfg("equation=heat", "device=cuda", "precision=float32", "network.width=50",
                           "network.depth=4", "sampler.n_interior=65536", "sampler.n_boundary=4096",
                           "sampler.n_initial=4096"))
    setup.problem.sample(np.random.default_rng(0))
    setup.problem.plan()
    setup.problem.loss()[0].backward()
    assert seen and all(len(real(*a)) <= 2 for a in seen)  # one block with derivative channels, one without


def test_lbfgs_on_cuda_takes_the_cpu_iterates_and_its_direction_never_syncs():
    """pinn's L-BFGS exists to drop torch's 100 host syncs per iteration: its direction must run with
    CUDA's sync debug mode set to error, and its iterates must be the CPU's."""
    from pinn_cli.lbfgs import LBFGS, _History

    def fit(device: str):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double().to(device)
        x = torch.rand(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
        target = torch.sin(3 * x[:, :1])
        opt = LBFGS(net.parameters(), lr=1.0, history_size=4, max_iter=12, line_search_fn="strong_wolfe",
                    tolerance_grad=1e-15, tolerance_change=1e-16)

        def closure():
            opt.zero_grad()
            loss = (net(x) - target).square().mean()
            loss.backward()
            return loss

        opt.step(closure)
        return opt, torch.cat([p.detach().flatten() for p in net.parameters()]).cpu()

    _, on_cpu = fit("cpu")
    opt, on_cuda = fit("cuda")
    torch.testing.assert_close(on_cuda, on_cpu, rtol=0, atol=1e-9)
    state = opt.state[opt._params[0]]
    assert state["head"] > 0  # the ring has wrapped: the reordering path is the one checked
    g = torch.randn(state["S"].shape[1], dtype=torch.float64, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _History.direction(state, g, state["H_diag"])
    finally:
        torch.cuda.set_sync_debug_mode("default")
