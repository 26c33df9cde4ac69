"""pinn's L-BFGS: its direction is the two-loop recursion's, its iterates are torch.optim.LBFGS's."""
from __future__ import annotations

import copy

import pytest
import torch

from pinn_cli.lbfgs import LBFGS, _History, lbfgs_direction


def two_loop(g: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]], h_diag: float) -> torch.Tensor:
    """The textbook recursion (Nocedal & Wright, Algorithm 7.4), pairs oldest first."""
    q, alphas = -g.clone(), []
    for s, y in reversed(pairs):
        a = s.dot(q) / y.dot(s)
        q -= a * y
        alphas.append(a)
    r = h_diag * q
    for (s, y), a in zip(pairs, reversed(alphas)):
        r += (a - y.dot(r) / y.dot(s)) * s
    return r


def quadratic_pairs(p: int, m: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(p, p, generator=gen, dtype=torch.float64)
    hess = a @ a.t() / p + torch.eye(p, dtype=torch.float64)
    S = torch.randn(m, p, generator=gen, dtype=torch.float64)
    return S, S @ hess, torch.randn(p, generator=gen, dtype=torch.float64)


def test_direction_is_the_two_loop_recursion():
    S, Y, g = quadratic_pairs(40, 12)
    want = two_loop(g, list(zip(S, Y)), 0.7)
    got = lbfgs_direction(g, S, Y, S @ Y.t(), 0.7)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_direction_with_rows_stored_out_of_order():
    S, Y, g = quadratic_pairs(30, 8, seed=1)
    order = torch.tensor([3, 4, 5, 6, 7, 0, 1, 2])  # a ring buffer whose oldest pair sits in row 3
    want = two_loop(g, [(S[i], Y[i]) for i in order], 1.3)
    got = lbfgs_direction(g, S, Y, S[order] @ Y[order].t(), 1.3, order)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_ring_keeps_the_newest_pairs_and_their_products_in_age_order(size):
    S, Y, g = quadratic_pairs(20, 13, seed=3)
    state: dict = {}
    _History.empty(state, size, g)
    for k in range(13):
        _History.push(state, S[k], Y[k], Y[k].dot(S[k]))
        kept = list(range(max(0, k + 1 - size), k + 1))
        pairs = _History.pairs(state)
        assert all(torch.equal(a, S[i]) and torch.equal(b, Y[i]) for (a, b), i in zip(pairs, kept))
        n = state["count"]
        assert torch.allclose(state["SY"][:n, :n], S[kept] @ Y[kept].t(), rtol=1e-13, atol=1e-13)
        want = two_loop(g, pairs, 0.9)
        assert torch.allclose(_History.direction(state, g, 0.9), want, rtol=1e-11, atol=1e-12)


def test_the_pivot_is_the_accepted_curvature():
    """The newest pivot is the y·s the step accepted (> 1e-10), not a recomputation that rounding could
    push to zero or below (float32 near the threshold), as torch's rho = 1 / y·s is."""
    S, Y, g = quadratic_pairs(10, 2, seed=4)
    state: dict = {}
    _History.empty(state, 2, g)
    _History.push(state, S[0], Y[0], torch.tensor(5e-10, dtype=torch.float64))
    assert state["SY"][0, 0].item() == 5e-10


def test_direction_inverts_the_hessian_from_conjugate_pairs():
    """With p mutually H-conjugate pairs of a quadratic (those an exact line search produces), BFGS
    recovers the inverse Hessian exactly, whatever the initial scale."""
    S, Y, g = quadratic_pairs(6, 6, seed=2)
    hess = torch.linalg.lstsq(S, Y).solution  # Y = S H
    chol = torch.linalg.cholesky(hess)
    q, _ = torch.linalg.qr(S)
    conj = torch.linalg.solve_triangular(chol.t(), q, upper=True).t()  # rows with s_i H s_j = delta_ij
    got = lbfgs_direction(g, conj, conj @ hess, conj @ hess @ conj.t(), 0.3)
    assert torch.allclose(got, -torch.linalg.solve(hess, g), rtol=1e-9, atol=1e-11)


def fit_problem(seed: int = 0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                              torch.nn.Linear(16, 1)).double()
    x = torch.rand(128, 2, dtype=torch.float64)
    target = torch.sin(3 * x[:, :1]) * x[:, 1:]
    return net, lambda: (net(x) - target).square().mean()


def run(cls, iters: int, chunk: int, history: int, line_search: str | None = "strong_wolfe", net_loss=None,
        opt=None):
    net, loss_fn = net_loss or fit_problem()
    opt = opt or cls(net.parameters(), lr=1.0 if line_search else 0.1, history_size=history, max_iter=chunk,
                     max_eval=2 * chunk + 5, line_search_fn=line_search, tolerance_grad=1e-15,
                     tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    for _ in range(iters // chunk):
        opt.step(closure)
    return torch.cat([p.detach().flatten() for p in net.parameters()]), opt, (net, loss_fn)


@pytest.mark.parametrize("line_search", ["strong_wolfe", None])
def test_iterates_match_torch_lbfgs_through_a_wrapped_history(line_search):
    """25 iterations with a history of 5: the ring buffer wraps around four times."""
    want, torch_opt, _ = run(torch.optim.LBFGS, 25, 5, 5, line_search)
    got, ours, _ = run(LBFGS, 25, 5, 5, line_search)
    assert torch.allclose(got, want, rtol=0, atol=1e-10)
    mine, theirs = ours.state[ours._params[0]], torch_opt.state[torch_opt._params[0]]
    assert (mine["n_iter"], mine["func_evals"]) == (theirs["n_iter"], theirs["func_evals"])
    assert mine["count"] == len(theirs["old_stps"]) == 5


def test_takes_over_a_torch_lbfgs_state():
    """A checkpoint written with torch.optim.LBFGS (earlier pinn versions) resumes onto the same path."""
    _, torch_opt, problem = run(torch.optim.LBFGS, 12, 6, 8)
    saved = copy.deepcopy(torch_opt.state_dict())
    want, _, _ = run(torch.optim.LBFGS, 12, 6, 8, net_loss=problem, opt=torch_opt)
    net, loss_fn = fit_problem()
    run(torch.optim.LBFGS, 12, 6, 8, net_loss=(net, loss_fn))  # the same first 12 iterations
    ours = LBFGS(net.parameters(), lr=1.0, history_size=8, max_iter=6, max_eval=17,
                 line_search_fn="strong_wolfe", tolerance_grad=1e-15, tolerance_change=1e-16)
    ours.load_state_dict(saved)
    got, ours, _ = run(LBFGS, 12, 6, 8, net_loss=(net, loss_fn), opt=ours)
    assert torch.allclose(got, want, rtol=0, atol=1e-10)
    assert "old_stps" not in ours.state[ours._params[0]]


def test_state_round_trips_and_a_smaller_history_keeps_the_newest_pairs():
    _, opt, (net, loss_fn) = run(LBFGS, 10, 5, 8)
    newest = [s.clone() for s, _ in _History.pairs(opt.state[opt._params[0]])[-2:]]
    smaller = LBFGS(net.parameters(), lr=1.0, history_size=3, max_iter=1, line_search_fn="strong_wolfe")
    smaller.load_state_dict(opt.state_dict())  # (this loads the saved history_size of 8 too)
    smaller.param_groups[0].update(history_size=3, max_iter=1)
    run(LBFGS, 1, 1, 3, net_loss=(net, loss_fn), opt=smaller)
    st = smaller.state[smaller._params[0]]
    assert st["S"].shape[0] == 3 and st["count"] == 3
    kept = [s for s, _ in _History.pairs(st)]
    assert all(torch.equal(a, b) for a, b in zip(kept[:2], newest))  # the newest two, then the new pair
