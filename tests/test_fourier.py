"""Fourier-feature networks: the embedding is exact, frozen, and every derivative engine handles it."""
from __future__ import annotations

import math

import pytest
import torch
from test_taylor import (
    assert_all_channels_and_gradients_match,
    assert_close,
    assert_fused_hvp_matches_traced,
    make_points,
)

from pinn_cli.errors import PinnConfigError
from pinn_cli.networks import MLP, trainable
from pinn_cli.taylor import taylor_channels


def fourier_net(dtype: torch.dtype = torch.float64, act: str = "tanh", sigma=(1.5, 3.0)) -> MLP:
    torch.manual_seed(0)
    net = MLP(2, 2, width=6, depth=2, activation=act, bounds=[(0.0, 1.0), (-1.0, 2.0)],
              fourier_features=4, fourier_sigma=list(sigma))
    return net.to(dtype)


def test_embedding_is_sin_cos_of_random_frequencies():
    net = fourier_net()
    x = make_points(net, 7)
    xs = x * net.in_scale + net.in_shift
    b = net.layers[0].weight[:4] / (2 * math.pi)
    emb = torch.cat([torch.sin(2 * math.pi * xs @ b.t()), torch.cos(2 * math.pi * xs @ b.t())], 1)
    assert torch.allclose(net.acts[0](net.layers[0](xs)), emb, atol=1e-12)
    assert not net.layers[0].weight.requires_grad
    assert [p.shape for p in trainable(net)] == [p.shape for p in list(net.parameters())[2:]]


@pytest.mark.parametrize("impl", ["traced", "fused"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("act", ["tanh", "sin", "gelu"])
def test_taylor_derivatives_and_gradients_match_autograd(act, dtype, impl):
    assert_all_channels_and_gradients_match(fourier_net(dtype, act), impl)


def test_hessian_vector_products_skip_the_frozen_embedding():
    """create_graph=True through the fused Function (pinn hessian) with a frozen first layer."""
    net = fourier_net()
    assert_fused_hvp_matches_traced(net, trainable(net))


def test_value_only_fused_backward():
    """No derivative channel at all (a value-only term): the fused backward must not trip on zero channels."""
    net = fourier_net()
    x = make_points(net, 9)
    v, f, c = taylor_channels(net, x, [], [], impl="fused")
    assert not f and not c
    params = trainable(net)
    got = torch.autograd.grad((v**2).sum(), params)
    ref = torch.autograd.grad((net(x) ** 2).sum(), params)
    for g, r in zip(got, ref):
        assert_close(g, r, "parameter gradient")


@pytest.mark.parametrize("kwargs, match", [
    ({"fourier_features": -1}, "network.fourier_features=-1"),
    ({"fourier_features": 4, "fourier_sigma": [1.0, 2.0, 3.0]}, "network.fourier_sigma"),
    ({"fourier_features": 4, "fourier_sigma": 0.0}, "network.fourier_sigma=0.0"),
    ({"fourier_features": 4, "fourier_sigma": "abc"}, "network.fourier_sigma='abc'"),
])
def test_bad_fourier_config_names_the_key(kwargs, match):
    with pytest.raises(PinnConfigError, match=match):
        MLP(2, 1, **kwargs)


@pytest.mark.slow
def test_fourier_heat_trains_with_frozen_embedding_and_resumes(tmp_path):
    """A Fourier-feature network trains heat to a stated error; its embedding stays what was drawn,
    is saved in the checkpoint, and a resume with another fourier_sigma is refused."""
    from conftest import make_cfg

    from pinn_cli import checkpoint
    from pinn_cli.errors import PinnError
    from pinn_cli.training import run_training

    overrides = ["equation=heat", "device=cpu", "precision=float64", "trainer.steps=600",
                 "optimizer.adam_steps=300", "sampler.n_interior=500", "sampler.n_boundary=100",
                 "sampler.n_initial=100", "network.width=20", "network.fourier_features=8",
                 "network.fourier_sigma=0.5", "trainer.eval_points=2000", "trainer.eval_every=100"]
    metrics = run_training(make_cfg(*overrides), tmp_path)
    assert metrics["rel_l2"] < 5e-3, metrics
    assert metrics["n_params"] == 16 * 20 + 20 + 20 * 20 + 20 + 20 * 20 + 20 + 20 + 1  # embedding excluded
    state = checkpoint.load(tmp_path / "checkpoints" / "last.pt")["model"]
    torch.manual_seed(0)
    fresh = MLP(2, 1, width=20, depth=3, fourier_features=8, fourier_sigma=0.5,
                bounds=[(0.0, 1.0), (0.0, 1.0)]).double()
    assert torch.equal(state["layers.0.weight"], fresh.layers[0].weight)  # seed 0 draws the same B; never trained
    with pytest.raises(PinnError, match="fourier_sigma"):
        run_training(make_cfg(*overrides, "network.fourier_sigma=2.0", "trainer.steps=700",
                              f"trainer.resume={tmp_path / 'checkpoints' / 'last.pt'}"), tmp_path / "r2")
