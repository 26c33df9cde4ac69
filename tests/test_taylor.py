"""Forward-mode Taylor derivatives of an MLP agree with nested torch.autograd.grad."""
from __future__ import annotations

import os
from itertools import combinations_with_replacement

import pytest
import torch
from torch import nn

from pinn_cli.networks import ACTIVATIONS, MLP
from pinn_cli.taylor import mlp_taylor, taylor_channels

RTOL = {torch.float64: 1e-10, torch.float32: 1e-5}
CONFIGS = [  # in_dim, out_dim, width, depth
    (1, 1, 5, 1),
    (2, 3, 8, 3),
    (3, 2, 6, 2),
]


def make_net(in_dim: int, out_dim: int, width: int, depth: int, act: str, dtype: torch.dtype, seed: int = 0,
             residual: bool = False) -> MLP:
    """A random MLP with random non-trivial biases and input bounds."""
    gen = torch.Generator().manual_seed(seed)
    lo = torch.rand(in_dim, generator=gen) * 2 - 1
    hi = lo + 0.5 + torch.rand(in_dim, generator=gen) * 2
    torch.manual_seed(seed)
    net = MLP(in_dim, out_dim, width=width, depth=depth, activation=act, bounds=list(zip(lo.tolist(), hi.tolist())),
              residual=residual)
    with torch.no_grad():
        for layer in net.layers:
            layer.bias.normal_(0.0, 0.3)
    return net.to(dtype)


def make_points(net: MLP, n: int, seed: int = 1) -> torch.Tensor:
    """Random points inside the network's input box."""
    gen = torch.Generator().manual_seed(seed)
    lo = (-1 - net.in_shift) / net.in_scale
    hi = (1 - net.in_shift) / net.in_scale
    return lo + (hi - lo) * torch.rand(n, net.in_dim, generator=gen, dtype=net.in_scale.dtype)


def all_pairs(in_dim: int) -> list[tuple[int, int]]:
    return list(combinations_with_replacement(range(in_dim), 2))


def autograd_derivs(net: nn.Module, x: torch.Tensor):
    """Value, all first and all second derivatives by nested autograd.grad (differentiable in the parameters)."""
    x = x.detach().requires_grad_(True)
    u = net(x)
    in_dim, out_dim = x.shape[1], u.shape[1]
    grads = [torch.autograd.grad(u[:, o].sum(), x, create_graph=True)[0] for o in range(out_dim)]
    first = {i: torch.stack([g[:, i] for g in grads], 1) for i in range(in_dim)}
    second = {}
    for i in range(in_dim):
        hess = [
            torch.autograd.grad(g[:, i].sum(), x, create_graph=True, materialize_grads=True)[0] for g in grads
        ]
        for j in range(i, in_dim):
            second[(i, j)] = torch.stack([h[:, j] for h in hess], 1)
    return u, first, second


def assert_close(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert got.shape == ref.shape and got.dtype == ref.dtype, what
    err = (got - ref).abs().max().item()
    scale = ref.abs().max().item() + 1e-300
    assert err <= RTOL[ref.dtype] * scale, f"{what}: max abs err {err:.3e}, reference scale {scale:.3e}"


@pytest.mark.parametrize("impl", ["traced", "fused"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "in{}_out{}_w{}_d{}".format(*c))
def test_matches_nested_autograd(config, act, dtype, impl):
    net = make_net(*config, act, dtype)
    x = make_points(net, 17)
    u, f_ref, p_ref = autograd_derivs(net, x)
    v, f, p = mlp_taylor(net, x, range(net.in_dim), all_pairs(net.in_dim), impl=impl)
    assert_close(v, u, "value")
    assert set(f) == set(f_ref) and set(p) == set(p_ref)
    for i in f_ref:
        assert_close(f[i], f_ref[i], f"d/dx{i}")
    for ij in p_ref:
        assert_close(p[ij], p_ref[ij], f"d2/dx{ij}")


@pytest.mark.parametrize("impl", ["traced", "fused"])
@pytest.mark.parametrize(
    "first, pairs",
    [
        ([], []),
        ([1], [(0, 0)]),
        ([], [(2, 2)]),
        ([2, 0], []),
        ([0], [(1, 2), (0, 0)]),
        ([1, 1], [(2, 1), (0, 2), (2, 1)]),
    ],
)
def test_returns_exactly_requested(first, pairs, impl):
    net = make_net(3, 2, 7, 3, "tanh", torch.float64)
    x = make_points(net, 11)
    u, f_ref, p_ref = autograd_derivs(net, x)
    v, f, p = mlp_taylor(net, x, first, pairs, impl=impl)
    assert set(f) == set(first)
    assert set(p) == set(pairs)
    assert_close(v, u, "value")
    for i in first:
        assert_close(f[i], f_ref[i], f"d/dx{i}")
    for i, j in pairs:
        assert_close(p[(i, j)], p_ref[(min(i, j), max(i, j))], f"d2/dx{i}dx{j}")


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("impl", ["traced", "fused"])
def test_identity_activation_gives_exact_zero_second_derivatives(impl, residual):
    net = make_net(3, 2, 6, 3, "identity", torch.float32, residual=residual)
    x = make_points(net, 9)
    _, f, p = mlp_taylor(net, x, [0, 1, 2], all_pairs(3), impl=impl)
    assert all(torch.equal(t, torch.zeros_like(t)) for t in p.values())
    assert any(t.abs().max() > 0 for t in f.values())


def test_single_linear_layer():
    net = make_net(2, 3, 4, 1, "tanh", torch.float64)
    net.layers = nn.ModuleList([nn.Linear(2, 3, dtype=torch.float64)])
    x = make_points(net, 5)
    u, f_ref, p_ref = autograd_derivs(net, x)
    v, f, p = mlp_taylor(net, x, [0, 1], all_pairs(2))
    assert_close(v, u, "value")
    for i in f_ref:
        assert_close(f[i], f_ref[i], f"d/dx{i}")
    for ij in p_ref:
        assert torch.equal(p[ij], torch.zeros_like(p_ref[ij]))


def test_rejects_out_of_range_direction():
    net = make_net(2, 1, 4, 1, "tanh", torch.float64)
    with pytest.raises(ValueError, match="out of range"):
        mlp_taylor(net, make_points(net, 3), [2], [])


def taylor_loss(
    net: MLP, x: torch.Tensor, weights: torch.Tensor, pairs: list[tuple[int, int]], impl: str = "auto"
) -> torch.Tensor:
    v, f, p = mlp_taylor(net, x, list(range(net.in_dim)), pairs, impl=impl)
    return loss_from(v, f, p, weights)


def loss_from(v, f, p, weights: torch.Tensor) -> torch.Tensor:
    """A residual-like loss mixing every channel, so every channel's parameter gradient is checked."""
    terms = [v, *(f[k] for k in sorted(f)), *(p[k] for k in sorted(p))]
    r = sum(w * t for w, t in zip(weights, terms))
    return (r * r).mean() + sum((t * t).mean() for t in terms)


def assert_all_channels_and_gradients_match(net: MLP, impl: str) -> None:
    """Value, both first and all second derivatives of a 2-input ``net`` against nested autograd; in
    float64 also the parameter gradients of a loss mixing every channel (trainable parameters only)."""
    x = make_points(net, 19)
    u, f_ref, p_ref = autograd_derivs(net, x)
    v, f, c = taylor_channels(net, x, [0, 1], [((1.0, p),) for p in all_pairs(2)], impl=impl)
    assert_close(v, u, "value")
    for i in (0, 1):
        assert_close(f[i], f_ref[i], f"d/dx{i}")
    for k, p in enumerate(all_pairs(2)):
        assert_close(c[k], p_ref[p], f"d2/dx{p}")
    if x.dtype is torch.float64:
        weights = torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
        params = [p for p in net.parameters() if p.requires_grad]
        ref = torch.autograd.grad(loss_from(*autograd_derivs(net, x), weights), params)
        got = torch.autograd.grad(taylor_loss(net, x, weights, all_pairs(2), impl), params)
        for g, r in zip(got, ref):
            assert_close(g, r, "parameter gradient")


@pytest.mark.parametrize("impl", ["traced", "fused"])
@pytest.mark.parametrize("act", ["tanh", "sin", "gelu", "silu", "identity"])
def test_parameter_gradients_match_autograd(act, impl):
    net = make_net(2, 2, 6, 3, act, torch.float64)
    x = make_points(net, 13)
    weights = torch.randn(1 + 2 + 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    params = list(net.parameters())
    ref = torch.autograd.grad(loss_from(*autograd_derivs(net, x), weights), params)
    got = torch.autograd.grad(taylor_loss(net, x, weights, all_pairs(2), impl), params)
    for (name, _), g, r in zip(net.named_parameters(), got, ref):
        assert_close(g, r, f"grad of {name}")


def _compile_available() -> bool:
    return not os.environ.get("PINN_SKIP_COMPILE") and torch._dynamo.is_dynamo_supported()


@pytest.mark.skipif(not _compile_available(), reason="torch.compile is unavailable here (or PINN_SKIP_COMPILE is set)")
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_torch_compile_matches_eager(residual):
    """Full-graph capture (no graph breaks) forward and backward; aot_eager by default, since a cold
    inductor C++ build can take ~40 s on 2 cores. PINN_TEST_INDUCTOR=1 runs the inductor backend."""
    backend = "inductor" if os.environ.get("PINN_TEST_INDUCTOR") else "aot_eager"
    net = make_net(2, 1, 8, 3, "tanh", torch.float32, residual=residual)
    x = make_points(net, 32)

    def step(x: torch.Tensor) -> torch.Tensor:
        v, f, p = mlp_taylor(net, x, [1], [(0, 0)])
        return ((f[1] - p[(0, 0)]) ** 2).mean() + (v**2).mean()

    params = list(net.parameters())
    ref_loss = step(x)
    ref = torch.autograd.grad(ref_loss, params)
    loss = torch.compile(step, backend=backend, fullgraph=True, dynamic=False)(x)
    got = torch.autograd.grad(loss, params)
    assert_close(loss, ref_loss, "loss")
    for g, r in zip(got, ref):
        assert_close(g, r, "parameter gradient")


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_activation_derivatives_match_autograd(act):
    z = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    a = ACTIVATIONS[act]()
    s, s1, s2 = a.derivs(z)
    for lower, higher in ((s, s1), (s1, s2), (s2, a.third(z, s, s1, s2))):
        if lower.requires_grad:
            (d,) = torch.autograd.grad(lower.sum(), z, retain_graph=True)
        else:  # a constant derivative (identity): the next one is zero
            d = torch.zeros_like(z)
        torch.testing.assert_close(higher.detach(), d, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, a(z), rtol=1e-12, atol=1e-12)


COMBOS = [  # (first, combos): operators carried as one channel, mixing orders and directions
    ([], [((1.0, (1,)), (-0.05, (0, 0)))]),  # heat: u_t - 0.05 u_xx
    ([0], [((1.0, (2,)), (-0.3, (0, 0)), (0.7, (1, 1)))]),  # u_x and u_z - 0.3 u_xx + 0.7 u_yy
    ([1], [((2.0, (0, 1)),), ((1.0, (2, 2)), (0.5, (0,)))]),  # 2 u_xy; u_zz + 0.5 u_x
    ([2], [((0.5, (0,)), (1.5, (1,)))]),  # first-order operator only
]


@pytest.mark.parametrize("impl", ["traced", "fused"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("first, combos", COMBOS)
def test_combos_and_value_rows_match_autograd(first, combos, act, impl):
    """Operator channels equal the same combination of nested-autograd derivatives; rows past
    ``n_deriv`` get the value only; parameter gradients agree too."""
    net = make_net(3, 2, 7, 3, act, torch.float64)
    x = make_points(net, 19)
    n = 13
    _, f_ref, p_ref = autograd_derivs(net, x[:n])
    v, f, c = taylor_channels(net, x, first, combos, n_deriv=n, impl=impl)
    assert_close(v, net(x), "value at all rows")
    assert set(f) == set(first) and len(c) == len(combos)
    for i in first:
        assert_close(f[i], f_ref[i], f"d/dx{i}")
    refs = [sum(a * (f_ref[idx[0]] if len(idx) == 1 else p_ref[idx]) for a, idx in combo) for combo in combos]
    for k, (got, ref) in enumerate(zip(c, refs)):
        assert_close(got, ref, f"combo {k}")
    weights = torch.linspace(0.5, 1.5, 1 + len(first) + len(combos), dtype=torch.float64)
    params = list(net.parameters())

    def loss(value, d1, cs):
        terms = [value[:n], *(d1[i] for i in first), *cs]
        r = sum(w * t for w, t in zip(weights, terms))
        return (r * r).mean() + (value[n:] ** 2).mean() + sum((t * t).mean() for t in cs)

    ref_grads = torch.autograd.grad(loss(net(x), f_ref, refs), params)
    got_grads = torch.autograd.grad(loss(v, f, c), params)
    for (name, _), g, r in zip(net.named_parameters(), got_grads, ref_grads):
        assert_close(g, r, f"grad of {name}")


def assert_fused_hvp_matches_traced(net: MLP, params: list[torch.Tensor]) -> None:
    """Hessian-vector products of a loss mixing value, u_x and a combo: fused Function == traced ops."""
    x = make_points(net, 11)
    vec = [torch.randn_like(p) for p in params]
    out = []
    for impl in ("traced", "fused"):
        v, f, c = taylor_channels(net, x, [0], [((1.0, (1,)), (-0.1, (0, 0)))], impl=impl)
        loss = (c[0] ** 2).mean() + (f[0] ** 2).mean() + (v ** 2).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        out.append(torch.autograd.grad(grads, params, vec))
    for a, b in zip(*out):
        assert_close(b, a, "Hessian-vector product")


def test_fused_double_backward_matches_traced():
    """create_graph=True through the fused Function (Hessian-vector products) recomputes exactly."""
    net = make_net(2, 1, 6, 3, "tanh", torch.float64)
    assert_fused_hvp_matches_traced(net, list(net.parameters()))


def test_vmap_uses_the_traced_path():
    """Under torch.func transforms the fused Function is not used; results match per-member calls."""
    from torch.func import functional_call, stack_module_state, vmap

    class Operator(nn.Module):
        def __init__(self, net: MLP) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return taylor_channels(self.net, x, [0], [((1.0, (1, 1)),)])[2][0]

    nets = [make_net(2, 1, 5, 2, "tanh", torch.float64, seed=s) for s in range(3)]
    params, buffers = stack_module_state(nets)
    state = {f"net.{k}": v for k, v in {**params, **buffers}.items()}
    x = make_points(nets[0], 7)
    op = Operator(nets[0])
    batched = vmap(lambda sd: functional_call(op, sd, (x,)))(state)
    for k, net in enumerate(nets):
        assert_close(batched[k], Operator(net)(x), f"member {k}")


def test_fused_blocks_agree_with_one_block(monkeypatch):
    """Points split into many blocks (derivative rows and value-only rows) give the same results."""
    from pinn_cli import taylor

    net = make_net(2, 2, 6, 3, "tanh", torch.float64)
    x = make_points(net, 23)
    params = list(net.parameters())

    def run():
        v, f, c = taylor_channels(net, x, [0], [((1.0, (1,)), (-0.2, (0, 0)))], n_deriv=17, impl="fused")
        loss = (v ** 2).mean() + (f[0] ** 2).mean() + (c[0] ** 2).mean()
        return [v, f[0], c[0], *torch.autograd.grad(loss, params)]

    whole = run()
    monkeypatch.setattr(taylor, "BLOCK_BYTES", 6 * 8 * 3 * 5)  # 5 rows per block
    for a, b in zip(whole, run()):
        assert_close(b, a, "blocked")


def test_a_first_call_under_inference_mode_does_not_break_training():
    """The per-plan seed cache must not keep an inference tensor: a later call must backpropagate."""
    from pinn_cli.derivatives import AutogradFields, ForwardFields

    net = make_net(2, 1, 4, 2, "tanh", torch.float64, seed=7)
    x = make_points(net, 5, seed=8)
    needs = {(0, (1,)), (0, (0, 0)), (0, (0, 1))}  # a plan no other test builds first
    with torch.inference_mode():
        assert ForwardFields(net, x, ("x", "t"), ("u",), needs).u_xx.shape == (5,)
    f = ForwardFields(net, x, ("x", "t"), ("u",), needs)
    loss = (f.u_t - f.u_xx + f.u_tx).square().mean()
    got = torch.autograd.grad(loss, list(net.parameters()), materialize_grads=True)
    g = AutogradFields(net, x, ("x", "t"), ("u",))
    want = torch.autograd.grad((g.u_t - g.u_xx + g.u_tx).square().mean(), list(net.parameters()), materialize_grads=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
