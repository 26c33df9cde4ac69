"""Residual MLPs (network.residual=true): the forward pass is h <- h + act(W h + b) on every hidden
block, and every derivative engine (traced, fused, its double backward) matches nested autograd."""
from __future__ import annotations

import pytest
import torch
from test_taylor import (
    assert_all_channels_and_gradients_match,
    assert_close,
    assert_fused_hvp_matches_traced,
    autograd_derivs,
    make_points,
)

from pinn_cli.errors import PinnConfigError
from pinn_cli.networks import MLP
from pinn_cli.taylor import taylor_channels


def residual_net(dtype: torch.dtype = torch.float64, act: str = "tanh", depth: int = 4, fourier: int = 0) -> MLP:
    torch.manual_seed(0)
    net = MLP(2, 2, width=6, depth=depth, activation=act, bounds=[(0.0, 1.0), (-1.0, 2.0)],
              fourier_features=fourier, residual=True)
    with torch.no_grad():
        for layer in net.layers:
            if layer.weight.requires_grad:
                layer.bias.normal_(0.0, 0.3)
    return net.to(dtype)


def test_forward_is_residual_blocks():
    net = residual_net(depth=3)
    x = make_points(net, 5)
    l0, l1, l2, out = net.layers
    h = torch.tanh(l0(x * net.in_scale + net.in_shift))
    h = h + torch.tanh(l1(h))
    h = h + torch.tanh(l2(h))
    assert net.skips == (False, True, True)
    assert torch.allclose(net(x), out(h), rtol=0, atol=1e-14)
    plain = MLP(2, 2, width=6, depth=3, bounds=[(0.0, 1.0), (-1.0, 2.0)]).double()
    plain.load_state_dict(net.state_dict())  # same parameters: a checkpoint's shapes do not change
    assert not torch.allclose(plain(x), net(x))


def test_fourier_embedding_is_not_a_skip():
    """The layer after a Fourier embedding changes width (2m -> width): no skip there."""
    net = residual_net(fourier=3)
    assert net.skips == (False, False, True, True, True)
    assert net.describe() == "mlp 6x4 tanh, residual, fourier 3"
    assert MLP(2, 1, width=16, depth=2).describe() == "mlp 16x2 tanh"


@pytest.mark.parametrize("impl", ["traced", "fused"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("act", ["tanh", "sin", "gelu", "silu"])
@pytest.mark.parametrize("fourier", [0, 3], ids=["plain", "fourier"])
def test_taylor_derivatives_and_gradients_match_autograd(fourier, act, dtype, impl):
    assert_all_channels_and_gradients_match(residual_net(dtype, act, fourier=fourier), impl)


def test_fused_combo_channel_with_value_rows_matches_autograd():
    """A fused operator channel (u_t - 0.1 u_xx) on the first rows plus value-only rows, as a PDE pass runs it."""
    net = residual_net(depth=5)
    x = make_points(net, 23)
    n = 15
    u, f_ref, p_ref = autograd_derivs(net, x)
    for impl in ("traced", "fused"):
        v, f, c = taylor_channels(net, x, [0], [((1.0, (1,)), (-0.1, (0, 0)))], n_deriv=n, impl=impl)
        assert_close(v, u, "value")
        assert_close(f[0], f_ref[0][:n], "u_x")
        assert_close(c[0], (f_ref[1] - 0.1 * p_ref[(0, 0)])[:n], "u_t - 0.1 u_xx")


def test_hessian_vector_products():
    net = residual_net()
    assert_fused_hvp_matches_traced(net, list(net.parameters()))


def test_bad_residual_value_names_the_key():
    with pytest.raises(PinnConfigError, match="network.residual='yes'"):
        MLP(2, 1, residual="yes")


@pytest.mark.slow
def test_residual_heat_trains_and_refuses_a_plain_resume(tmp_path):
    """A residual network trains heat to a stated error; resuming it as a plain MLP is refused."""
    from conftest import make_cfg

    from pinn_cli.errors import PinnError
    from pinn_cli.training import run_training

    overrides = ["equation=heat", "device=cpu", "precision=float64", "trainer.steps=600",
                 "optimizer.adam_steps=300", "sampler.n_interior=500", "sampler.n_boundary=100",
                 "sampler.n_initial=100", "network.width=20", "network.depth=4", "network.residual=true",
                 "trainer.eval_points=2000", "trainer.eval_every=100"]
    metrics = run_training(make_cfg(*overrides), tmp_path)
    assert metrics["rel_l2"] < 1e-3, metrics
    with pytest.raises(PinnError, match="network.residual"):
        run_training(make_cfg(*overrides[:-3], "network.residual=false", "trainer.steps=700",
                              f"trainer.resume={tmp_path / 'checkpoints' / 'last.pt'}"), tmp_path / "r2")
