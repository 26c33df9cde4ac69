"""The network config group (mlp, fourier_mlp, resnet, modified_mlp): each builds, picks its derivative
engine, and the modified MLP computes its gates and trains heat to a stated error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CONFIGS, make_cfg

from pinn_cli.errors import PinnConfigError, PinnError
from pinn_cli.networks import MLP, ModifiedMLP
from pinn_cli.training import build, run_training

NETWORKS = sorted(p.stem for p in (CONFIGS / "network").glob("*.yaml"))


def test_the_contracts_networks_are_all_there():
    assert set(NETWORKS) >= {"mlp", "fourier_mlp", "modified_mlp", "resnet"}


@pytest.mark.parametrize("name", NETWORKS)
def test_network_builds_and_picks_its_engine(name):
    setup = build(make_cfg(f"network={name}", "device=cpu", "precision=float64", "sampler.n_interior=64"))
    setup.problem.sample(np.random.default_rng(0))
    setup.problem.plan()
    net = setup.net
    expected = {"mlp": (MLP, "mlp 32x3"), "fourier_mlp": (MLP, "fourier 64"), "resnet": (MLP, "residual"),
                "modified_mlp": (ModifiedMLP, "modified_mlp 32x3")}[name]
    assert isinstance(net, expected[0]) and expected[1] in net.describe()
    engines = {t.engine for t in setup.problem.terms}
    assert engines == {"forward"}  # the modified MLP through Taylor jets (jets.py)
    total, _ = setup.problem.loss()
    assert torch.isfinite(total)


def test_modified_mlp_gates_every_layer_between_its_encoders():
    """h <- z * U + (1 - z) * V: with z forced to 1 the hidden state is U, with z forced to 0 it is V."""
    torch.manual_seed(0)
    net = ModifiedMLP(2, 1, width=5, depth=2, activation="tanh").double()
    x = torch.rand(6, 2, dtype=torch.float64) * 2 - 1
    u, v = torch.tanh(net.encode_u(x)), torch.tanh(net.encode_v(x))
    for z in (1.0, -1.0):  # tanh(+-50) is +-1 to double precision
        with torch.no_grad():
            net.layers[-1].weight.zero_()
            net.layers[-1].bias.fill_(50.0 * z)
        torch.testing.assert_close(net(x), net.out(v + z * (u - v)), rtol=1e-12, atol=1e-12)


def test_network_specific_errors():
    with pytest.raises(PinnConfigError, match="choose from: mlp, fourier_mlp, resnet, modified_mlp"):
        build(make_cfg("network.name=transformer", "device=cpu"))
    with pytest.raises(PinnConfigError, match="fourier_features > 0"):
        build(make_cfg("network=fourier_mlp", "network.fourier_features=0", "device=cpu"))
    with pytest.raises(PinnConfigError, match="residual=true"):
        build(make_cfg("network=resnet", "network.residual=false", "device=cpu"))
    with pytest.raises(PinnConfigError, match="network.width"):
        build(make_cfg("network=modified_mlp", "network.width=0", "device=cpu"))


def test_modified_mlp_trains_heat_and_refuses_an_mlp_resume(tmp_path):
    overrides = ["equation=heat", "network=modified_mlp", "device=cpu", "precision=float64", "trainer.steps=500",
                 "optimizer.adam_steps=250", "sampler.n_interior=400", "sampler.n_boundary=80",
                 "sampler.n_initial=80", "network.width=20", "trainer.eval_points=2000", "trainer.eval_every=100"]
    metrics = run_training(make_cfg(*overrides), tmp_path)
    assert metrics["rel_l2"] < 1e-3, metrics  # measured 1.8e-4
    with pytest.raises(PinnError, match="network.name"):
        run_training(make_cfg(*overrides[:1], "network=mlp", *overrides[2:], "trainer.steps=600",
                              f"trainer.resume={tmp_path / 'checkpoints' / 'last.pt'}"), tmp_path / "r2")


@pytest.mark.parametrize("act", ["tanh", "sin", "gelu", "silu"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_modified_mlp_jets_match_nested_autograd(act, dtype, tol):
    """The forward engine on the modified MLP (Taylor jets through its gates): every first and second
    derivative, mixed ones and a fused operator channel, and their parameter gradients."""
    from pinn_cli.derivatives import AutogradFields, ForwardFields, ForwardPlan

    torch.manual_seed(0)
    net = ModifiedMLP(3, 2, width=6, depth=3, activation=act, bounds=[(0, 1), (-1, 2), (0, 3)]).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.rand(9, 3, dtype=dtype)
    names, outs = ("x", "y", "t"), ("u", "v")
    needs = {(o, idx) for o in (0, 1) for idx in [(0,), (1,), (2,), (0, 0), (0, 1), (1, 2), (2, 2)]}
    fused = ForwardPlan.build({(0, (2,)), (0, (0, 0)), (0, (0, 1))}, {0: {(2,): 1.0, (0, 0): -0.1, (0, 1): 0.5}})
    for f in (ForwardFields(net, x, names, outs, needs),
              ForwardFields(net, x, names, outs, {(0, (2,)), (0, (0, 0)), (0, (0, 1))}, plan=fused)):
        g = AutogradFields(net, x, names, outs)

        def loss(fl):
            return (fl.u_t - 0.1 * fl.u_xx + 0.5 * fl.u_xy).square().sum()

        keys = needs if f._cache.keys() >= needs else set()
        for k in keys:
            torch.testing.assert_close(f.get(k), g.get(k), rtol=tol, atol=tol)
        got = torch.autograd.grad(loss(f), list(net.parameters()), materialize_grads=True)
        want = torch.autograd.grad(loss(g), list(net.parameters()), materialize_grads=True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))
