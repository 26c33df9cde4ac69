"""Loss-Hessian analysis: Hessian-vector products, Lanczos, Hutchinson and SLQ against the dense
Hessian (torch.func.hessian) of a tiny float64 network, and the ``pinn hessian`` command."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import make_cfg
from torch import nn
from torch.func import functional_call

from pinn_cli import hessian as hs
from pinn_cli.ensemble import FuncFields
from pinn_cli.errors import PinnConfigError, PinnError
from pinn_cli.problem import mse
from pinn_cli.training import build, run_training


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


TINY = ["device=cpu", "precision=float64", "network.width=5", "network.depth=2", "sampler.n_interior=24",
        "sampler.n_boundary=12", "sampler.n_initial=8"]


def tiny_problem(equation="poisson2d", derivatives="auto", seed=0):
    s = build(make_cfg(f"equation={equation}", f"derivatives={derivatives}", f"seed={seed}", *TINY))
    s.problem.sample(np.random.default_rng(seed))
    s.problem.plan()
    return s


class _Loss(nn.Module):
    """The PINN loss as a module of the network, with derivatives by torch.func (no engine involved)."""

    def __init__(self, setup, term=None) -> None:
        super().__init__()
        self.net = setup.net
        self.setup = setup
        self.term = term

    def forward(self):
        eq = self.setup.equation
        total = 0.0
        for t in self.setup.problem.terms:
            if self.term in (None, t.name):
                f = FuncFields(self.net, t.x, eq.inputs, eq.outputs, t.needs, t.normals)
                total = total + t.weight * mse(t.residual(f))
        return total


def dense_hessian(setup, term=None) -> torch.Tensor:
    """torch.func.hessian of the flattened-parameter loss: the reference, never used by pinn itself."""
    names = [n for n, _ in setup.net.named_parameters()]
    params = [p.detach() for p in setup.net.parameters()]
    flat0 = torch.cat([p.reshape(-1) for p in params])
    module = _Loss(setup, term)

    def loss(flat):
        sd, i = {}, 0
        for n, p in zip(names, params):
            sd[f"net.{n}"] = flat[i:i + p.numel()].view(p.shape)
            i += p.numel()
        return functional_call(module, sd, ())

    return torch.func.hessian(loss)(flat0)


def hvp_of(setup, term=None, chunk=0):
    pieces = {n: f for n, _, f in hs.targets(setup.problem, chunk=chunk)}[term or "total"]
    return hs.HVP(pieces, list(setup.net.parameters()))


@pytest.mark.parametrize("equation", ["poisson2d", "heat"])
@pytest.mark.parametrize("derivatives", ["autograd", "forward"])
def test_hvp_columns_equal_dense_hessian(equation, derivatives):
    """Double backward through either derivative engine gives the exact Hessian (every column)."""
    s = tiny_problem(equation, derivatives)
    assert {t.engine for t in s.problem.terms} == {derivatives}
    dense = dense_hessian(s)
    hvp = hvp_of(s)
    cols = torch.stack([hvp(e) for e in torch.eye(hvp.n, dtype=torch.float64)], 1)
    assert torch.allclose(cols, dense, rtol=1e-9, atol=1e-9 * dense.abs().max())
    assert torch.allclose(dense, dense.T, atol=1e-10 * dense.abs().max())


def test_term_hessians_and_chunks_add_up_to_the_total():
    s = tiny_problem("heat")
    v = torch.randn(sum(p.numel() for p in s.net.parameters()), dtype=torch.float64)
    whole = hvp_of(s)(v)
    parts = sum(hvp_of(s, t.name)(v) for t in s.problem.terms)
    assert torch.allclose(whole, parts, rtol=1e-10, atol=1e-10)
    chunked = hvp_of(s, chunk=5)
    assert len(chunked.pieces) == 5 + 2 + 3  # 24 pde, 8 ic, 12 bc points in chunks of 5
    assert torch.allclose(chunked(v), whole, rtol=1e-10, atol=1e-10)
    assert float(chunked.loss) == pytest.approx(float(hvp_of(s).loss.detach()), rel=1e-12)
    d_bc = dense_hessian(s, "bc")
    assert torch.allclose(torch.stack([hvp_of(s, "bc")(e) for e in torch.eye(len(v), dtype=torch.float64)], 1),
                          d_bc, atol=1e-9 * d_bc.abs().max())


def test_lanczos_top_k_and_extremes_match_dense():
    s = tiny_problem()
    dense = dense_hessian(s)
    ev = torch.linalg.eigvalsh(dense).numpy()[::-1]
    hvp = hvp_of(s)
    n = hvp.n
    res, _ = hs.top_eigenvalues(hvp, n, k=5, iters=n, tol=1e-10, seed=3)
    assert res["lanczos_iterations"] < n                 # stopped once the top 5 converged
    assert all(res["converged"])
    np.testing.assert_allclose(res["top_eigenvalues"], ev[:5], rtol=1e-4)
    assert max(abs(a - b) / abs(b) for a, b in zip(res["top_eigenvalues"], ev[:5])) < 1e-8
    full, krylov = hs.top_eigenvalues(hvp, n, k=5, iters=n, tol=0.0)  # run to the full space
    assert full["exact"] and krylov.iterations == n
    np.testing.assert_allclose(full["lambda_min"], ev[-1], rtol=1e-4)
    np.testing.assert_allclose(np.sort(krylov.ritz)[::-1], ev, rtol=1e-6, atol=1e-8 * abs(ev[0]))
    assert full["indefinite"] == bool(ev[-1] < 0)
    if full["indefinite"]:
        assert full["condition_number"] is None
    else:
        assert full["condition_number"] == pytest.approx(abs(ev[0] / ev[-1]), rel=1e-4)
    assert res["history"][-1] == res["top_eigenvalues"] and len(res["history"]) == res["lanczos_iterations"]


def test_trace_estimates_against_dense():
    s = tiny_problem()
    dense = dense_hessian(s)
    trace = float(torch.trace(dense))
    hvp = hvp_of(s)
    n = hvp.n
    # the whole Krylov space: tr(T) is tr(H) exactly, and the deflated estimator has no variance left
    full = hs.analyze(hvp, n, top_k=3, iters=n, tol=0.0, trace_samples=8, slq_vectors=0)
    assert full["trace_krylov"] == pytest.approx(trace, rel=1e-10)
    assert full["trace"]["estimate"] == pytest.approx(trace, rel=1e-4)
    # part of it: deflation only removes variance; the estimate stays inside its interval
    part = hs.analyze(hvp, n, top_k=3, iters=n // 2, tol=0.0, trace_samples=200, slq_vectors=0, seed=5)
    tr = part["trace"]
    lo, hi = tr["interval"]
    assert lo - 2 * tr["stderr"] <= trace <= hi + 2 * tr["stderr"]
    assert tr["stderr"] < tr["plain"]["stderr"] / 3
    plain = tr["plain"]
    assert abs(plain["estimate"] - trace) < 4 * plain["stderr"]


def test_hutchinson_is_exact_for_a_diagonal_and_slq_recovers_the_spectrum():
    d = torch.tensor([5.0, 3.0, 3.0, 1.0, -0.5, 0.25], dtype=torch.float64)
    mv = lambda v: d * v
    h = hs.hutchinson(mv, 6, samples=5)
    assert h["estimate"] == pytest.approx(float(d.sum()), abs=1e-12) and h["stderr"] == pytest.approx(0, abs=1e-12)
    dens = hs.slq(mv, 6, vectors=3, iters=6)
    for nodes, weights in zip(dens["nodes"], dens["weights"]):
        assert sum(weights) == pytest.approx(1.0)
        distinct = sorted(set(np.round(d.numpy(), 9)))
        np.testing.assert_allclose(sorted(nodes), distinct, atol=1e-8)  # a repeated eigenvalue shows once
    assert dens["trace_estimate"] == pytest.approx(float(d.sum()), rel=1e-9)  # Rademacher: z^T D z = tr D
    grid = np.linspace(-2, 7, 4001)
    area = np.trapezoid(hs.density(dens["nodes"], dens["weights"], grid, 0.1), grid)
    assert area == pytest.approx(1.0, rel=1e-3)


def test_float32_lanczos_stays_orthogonal():
    """Full reorthogonalisation: no ghost copies of the top eigenvalue in single precision."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((200, 200)))
    ev = np.concatenate([[100.0, 50.0], rng.uniform(0, 1, 198)])
    a = torch.tensor((q * ev) @ q.T, dtype=torch.float32)
    res, krylov = hs.top_eigenvalues(lambda v: a.double().mv(v).float().double(), 200, k=2, iters=120, tol=0.0)
    assert res["top_eigenvalues"] == pytest.approx([100.0, 50.0], rel=1e-5)
    assert sum(abs(r - 100.0) < 1e-2 for r in krylov.ritz) == 1


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hrun")
    cfg = make_cfg("equation=heat", "trainer.steps=30", "optimizer.adam_steps=20", "trainer.log_every=10",
                   "trainer.eval_every=10", "trainer.eval_points=100", "network.width=6", "analysis.hessian_every=10",
                   "sampler.n_interior=64", "sampler.n_boundary=16", "sampler.n_initial=16", "device=cpu")
    run_training(cfg, out)
    return out


def test_hessian_every_logs_the_top_eigenvalue(run_dir):
    rows = read_csv(run_dir / "history.csv")
    assert "hessian_top" in rows[0]
    tops = [float(r["hessian_top"]) for r in rows]
    assert len(tops) == 3 and all(t > 0 for t in tops)


def test_hessian_command_writes_json_and_figure(run_dir):
    from pinn_cli.commands import hessian as cmd

    cmd.main([str(run_dir), "hessian.top_k=3", "hessian.iters=40", "hessian.trace_samples=10",
              "hessian.slq_vectors=2", "hessian.points=50"])
    out = json.loads((run_dir / "hessian.json").read_text())
    assert set(out["results"]) == {"total", "pde", "ic", "bc"}
    assert out["points"] == {"pde": 50, "ic": 16, "bc": 16}
    assert out["peak_rss_mb"] > 0 and out["n_params"] == 6 * 2 + 6 + 6 * 6 + 6 + 6 * 6 + 6 + 7
    tot = out["results"]["total"]
    assert len(tot["top_eigenvalues"]) == 3 and tot["top_eigenvalues"] == sorted(tot["top_eigenvalues"], reverse=True)
    assert tot["trace"]["interval"][0] <= tot["trace"]["estimate"] <= tot["trace"]["interval"][1]
    assert len(tot["density"]["nodes"]) == 2
    assert (tot["condition_number"] is None) == tot["indefinite"]
    assert (run_dir / "hessian_spectrum.png").stat().st_size > 10_000
    cmd.main([str(run_dir), "hessian.terms=[pde]", "hessian.trace_samples=0", "hessian.slq_vectors=0",
              "hessian.iters=20", "derivatives=autograd"])
    out2 = json.loads((run_dir / "hessian.json").read_text())
    assert set(out2["results"]) == {"total", "pde"} and "trace" not in out2["results"]["pde"]
    assert out2["derivatives"]["pde"] == "autograd" and out2["points"]["pde"] == 64
    assert out2["results"]["pde"]["top_eigenvalues"][0] > 0


def test_hessian_command_errors(run_dir, tmp_path):
    from pinn_cli.commands import hessian as cmd

    with pytest.raises(PinnConfigError, match="hessian.terms: 'foo' is not a loss term"):
        cmd.main([str(run_dir), "hessian.terms=[foo]"])
    with pytest.raises(PinnConfigError, match="hessian.top_k=0 is invalid"):
        cmd.main([str(run_dir), "hessian.top_k=0"])
    with pytest.raises(PinnConfigError, match="hessian.topk is not an option"):
        cmd.main([str(run_dir), "hessian.topk=3"])
    with pytest.raises(PinnConfigError, match="hessian.member=1 applies to ensemble runs"):
        cmd.main([str(run_dir), "hessian.member=1"])
    with pytest.raises(PinnConfigError, match="hessian.top_k=50 needs hessian.iters >= 50"):
        cmd.main([str(run_dir), "hessian.top_k=50", "hessian.iters=10"])
    with pytest.raises(PinnError, match="does not exist"):
        cmd.main([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PinnError, match="no checkpoints/best.pt"):
        cmd.main([str(tmp_path / "empty")])


def test_indefinite_hessian_has_no_condition_number():
    d = torch.tensor([5.0, 2.0, 1.0, -3.0], dtype=torch.float64)
    out, _ = hs.top_eigenvalues(lambda v: d * v, 4, k=2, iters=4)
    assert out["indefinite"] is True and out["condition_number"] is None
    assert out["lambda_min"] == pytest.approx(-3.0) and out["top_eigenvalues"] == pytest.approx([5.0, 2.0])
    pos, _ = hs.top_eigenvalues(lambda v: d.abs() * v, 4, k=2, iters=4)
    assert pos["indefinite"] is False and pos["condition_number"] == pytest.approx(5.0)


def test_a_lambda_min_within_the_tolerance_of_zero_gives_no_finite_condition_number():
    """A slightly negative lambda_min inside the zero band is not called indefinite, and |max/min| of
    it would be a meaningless finite number: the Hessian is numerically singular."""
    d = torch.tensor([5.0, 2.0, 1.0, -1e-9], dtype=torch.float64)
    out, _ = hs.top_eigenvalues(lambda v: d * v, 4, k=2, iters=4, tol=1e-6)
    assert out["indefinite"] is False and out["condition_number"] == math.inf


def test_a_term_of_weight_zero_has_a_zero_spectrum(tmp_path, capsys):
    from pinn_cli.commands import hessian as cmd

    run_training(make_cfg("equation=heat", "equation.weights.ic=0", "trainer.steps=5", "trainer.eval_points=100",
                          *TINY), tmp_path)
    n = 5 * 2 + 5 + 5 * 5 + 5 + 5 + 1
    cmd.main([str(tmp_path), "hessian.trace_samples=0", "hessian.slq_vectors=0", f"hessian.top_k={n + 5}",
              f"hessian.iters={n + 5}"])
    assert f"hessian.top_k={n + 5} exceeds the network's {n} parameters" in capsys.readouterr().err
    ic = json.loads((tmp_path / "hessian.json").read_text())["results"]["ic"]
    assert ic["weight"] == 0 and ic["exact"] is True and ic["indefinite"] is False
    assert ic["top_eigenvalues"] == [0.0] and ic["lambda_max"] == 0.0


def test_a_top_k_above_the_parameter_count_is_clamped_to_it(tmp_path, capsys):
    """hessian.top_k above the parameter count n was refused unless hessian.iters >= top_k, though n
    Lanczos steps give the whole spectrum: top_k=500 failed with the default 100 steps. It is now
    clamped to n with one line on stderr, needs iters >= n only, and hessian.json records both."""
    from pinn_cli.commands import hessian as cmd

    run_training(make_cfg("equation=heat", "trainer.steps=5", "trainer.eval_points=100", *TINY), tmp_path)
    n = 5 * 2 + 5 + 5 * 5 + 5 + 5 + 1
    args = [str(tmp_path), "hessian.top_k=500", "hessian.trace_samples=0", "hessian.slq_vectors=0", "hessian.terms=[ic]"]
    cmd.main(args)
    assert capsys.readouterr().err.splitlines() == [
        f"pinn hessian: hessian.top_k=500 exceeds the network's {n} parameters; using hessian.top_k={n}, "
        "the whole spectrum (a repeated eigenvalue is listed once)"]
    out = json.loads((tmp_path / "hessian.json").read_text())
    assert out["options"]["top_k"] == n and out["options"]["top_k_requested"] == 500
    total, ic = out["results"]["total"], out["results"]["ic"]
    assert total["exact"] and len(total["top_eigenvalues"]) == total["lanczos_iterations"] == n
    assert total["top_eigenvalues"] == sorted(total["top_eigenvalues"], reverse=True)
    # at t = 0 the 5 weights on t have no gradient: eigenvalue 0 five times over, listed once
    assert ic["exact"] and len(ic["top_eigenvalues"]) <= n - 4
    assert min(abs(v) for v in ic["top_eigenvalues"]) < 1e-10 * ic["lambda_max"]
    with pytest.raises(PinnConfigError, match=rf"hessian.top_k=500 \(clamped to the network's {n} parameters\) "
                                              rf"needs hessian.iters >= {n} \(.*; it is 30\)"):
        cmd.main([*args, "hessian.iters=30"])


def test_clamp_top_k():
    """At most n_params eigenvalues are asked of Lanczos, and iters must reach that many."""
    from pinn_cli.commands.hessian import clamp_top_k

    assert clamp_top_k(5, 100, 17) == (5, None)
    k, note = clamp_top_k(30, 17, 17)
    assert k == 17 and "hessian.top_k=30 exceeds the network's 17 parameters" in note
    with pytest.raises(PinnConfigError, match="hessian.top_k=12 needs hessian.iters >= 12"):
        clamp_top_k(12, 11, 17)


def test_causal_runs_are_analysed_with_their_causal_loss(tmp_path):
    """pinn hessian sees the loss training minimised: the causally weighted PDE term (weights held at the
    checkpoint's values), the same as the run's own hessian_top, and its chunked products agree."""
    from pinn_cli.commands import hessian as cmd

    cfg = make_cfg("equation=heat", "trainer.causal_chunks=4", "trainer.causal_eps=5", "optimizer=adam",
                   "trainer.steps=20", "trainer.log_every=10", "analysis.hessian_every=20", "trainer.eval_points=100",
                   "equation.weights.pde=10", *TINY)
    run_training(cfg, tmp_path)
    top = float(read_csv(tmp_path / "history.csv")[-1]["hessian_top"])
    args = [str(tmp_path), "--checkpoint", "last.pt", "hessian.trace_samples=0", "hessian.slq_vectors=0",
            "hessian.iters=40", "hessian.top_k=1"]
    cmd.main([*args, "hessian.terms=[pde]"])
    out = json.loads((tmp_path / "hessian.json").read_text())
    assert out["results"]["total"]["lambda_max"] == pytest.approx(top, rel=1e-6)
    assert "causally weighted" in out["note"]
    cmd.main([*args, "hessian.terms=[pde]", "hessian.chunk=5"])
    chunked = json.loads((tmp_path / "hessian.json").read_text())["results"]
    for name in ("total", "pde"):
        assert chunked[name]["lambda_max"] == pytest.approx(out["results"][name]["lambda_max"], rel=1e-9)
        assert chunked[name]["loss"] == pytest.approx(out["results"][name]["loss"], rel=1e-12)
