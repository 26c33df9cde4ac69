"""``equation=custom``: equations written in YAML, parsed safely by sympy into torch."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, make_cfg
from omegaconf import OmegaConf

from pinn_cli.derivatives import AutogradFields
from pinn_cli.equations.custom import Custom
from pinn_cli.errors import PinnConfigError
from pinn_cli.problem import mse
from pinn_cli.training import build, run_training

MY_HEAT = """\
# configs/equation/my_heat.yaml
defaults: [custom]
name: my_heat
inputs: [x, t]
outputs: [u]
bounds: {x: [0, 1], t: [0, 1]}   # a box; `domain=...` may replace it (disk, polygon, ...)
params: {alpha: 0.1}
residual: "u_t - alpha*u_xx"
conditions:
  - {where: "t == 0", value: "sin(pi*x)"}
  - {where: "x == 0", value: "0"}
  - {where: "x == 1", expr: "u_x + u", value: "-pi*exp(-alpha*pi**2*t)"}
exact: "exp(-alpha*pi**2*t)*sin(pi*x)"
"""


def user_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "configs"
    (root / "equation").mkdir(parents=True)
    for name, text in files.items():
        (root / "equation" / f"{name}.yaml").write_text(textwrap.dedent(text))
    return root


def searchpath(root: Path) -> str:
    return f"hydra.searchpath=[file://{root}]"


def exact_residuals(setup, seed=0) -> dict[str, float]:
    eq, problem = setup.equation, setup.problem
    problem.sample(np.random.default_rng(seed))
    net = lambda x: eq.exact(x)
    return {t.name: mse(t.residual(AutogradFields(net, t.x, eq.inputs, eq.outputs, t.normals))).item()
            for t in problem.terms}


def base(**kw):
    spec = dict(inputs=["x", "t"], bounds={"x": [0, 1], "t": [0, 1]}, params={"alpha": 0.1},
                residual="u_t - alpha*u_xx", exact="exp(-alpha*pi**2*t)*sin(pi*x)",
                conditions=[{"where": "initial", "value": "sin(pi*x)"}])
    spec.update(kw)
    return Custom(**spec)


def test_the_issue_example_from_a_user_directory(tmp_path):
    root = user_dir(tmp_path, {"my_heat": MY_HEAT})
    setup = build(make_cfg("equation=my_heat", searchpath(root), "device=cpu"))
    eq = setup.equation
    assert eq.name == "my_heat" and eq.terms == ["pde", "ic", "bc1", "bc2"]
    res = exact_residuals(setup)
    assert max(res.values()) < 1e-20, res
    terms = {t.name: t for t in setup.problem.terms}
    assert bool((terms["ic"].x[:, 1] == 0).all())
    assert bool((terms["bc1"].x[:, 0] == 0).all()) and len(terms["bc1"].x) == 200
    assert bool((terms["bc2"].x[:, 0] == 1).all()) and bool((terms["bc2"].normals[:, 0] == 1).all())


def test_custom_alone_runs_the_example():
    setup = build(make_cfg("equation=custom", "device=cpu"))
    assert setup.equation.terms == ["pde", "ic", "bc1", "bc2"]
    assert max(exact_residuals(setup).values()) < 1e-20


def test_neumann_and_robin_along_the_normal_on_a_disk(tmp_path):
    """u = e^{-2 alpha t}... no: u = exp(x) cos(y) is harmonic; on the unit circle u_n = x u_x + y u_y."""
    root = user_dir(tmp_path, {"laplace_disk": """\
        defaults:
          - custom
          - override /domain@_global_.domain: disk
        name: laplace_disk
        inputs: [x, y]
        bounds: {x: [-1, 1], y: [-1, 1]}
        residual: "u_xx + u_yy"
        conditions:
          - {where: "boundary and x > 0", expr: "u_n", value: "exp(x)*(x*cos(y) - y*sin(y))"}
          - {where: "x <= 0", expr: "u_n + 2*u", value: "exp(x)*(x*cos(y) - y*sin(y) + 2*cos(y))", name: robin}
        exact: "exp(x)*cos(y)"
        """})
    setup = build(make_cfg("equation=laplace_disk", searchpath(root), "device=cpu"))
    assert setup.domain.shape.kind == "disk" and setup.equation.terms == ["pde", "bc1", "robin"]
    res = exact_residuals(setup)
    assert max(res.values()) < 1e-20, res
    terms = {t.name: t for t in setup.problem.terms}
    assert bool((terms["bc1"].x[:, 0] > 0).all()) and bool((terms["robin"].x[:, 0] <= 0).all())
    # a wrong normal derivative is caught: u_n of u = exp(x)cos(y) is not exp(x)cos(y)
    wrong = Custom(inputs=["x", "y"], bounds={"x": [-1, 1], "y": [-1, 1]}, residual="u_xx + u_yy",
                   conditions=[{"where": "boundary", "expr": "u_n", "value": "exp(x)*cos(y)"}])
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    f = AutogradFields(lambda p: torch.exp(p[:, :1]) * torch.cos(p[:, 1:]), x, ("x", "y"), ("u",),
                       torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert abs(wrong.conditions()[0].residual(f).item()) < 1e-12      # at (1, 0): u_n = u = e
    f2 = AutogradFields(lambda p: torch.exp(p[:, :1]) * torch.cos(p[:, 1:]),
                        torch.tensor([[0.0, 1.0]], dtype=torch.float64), ("x", "y"), ("u",),
                        torch.tensor([[0.0, 1.0]], dtype=torch.float64))
    assert abs(wrong.conditions()[0].residual(f2).item()) > 0.5        # at (0, 1): u_n = -sin 1, u = cos 1


def test_a_system_with_two_outputs_and_point_conditions():
    eq = Custom(inputs=["x"], outputs=["u", "v"], bounds={"x": [0, 3]}, residual=["u_x - v", "v_x + u"],
                conditions=[{"at": {"x": [0]}, "value": "0"}, {"at": {"x": 0}, "output": "v", "value": "1"}],
                exact={"u": "sin(x)", "v": "cos(x)"})
    assert eq.outputs == ("u", "v") and eq.terms == ["pde", "pt1", "pt2"]
    x = torch.linspace(0, 3, 7, dtype=torch.float64)[:, None]
    f = AutogradFields(eq.exact, x, eq.inputs, eq.outputs)
    res = eq.residual(f)
    assert isinstance(res, tuple) and len(res) == 2 and max(float(r.detach().abs().max()) for r in res) < 1e-14
    assert eq.conditions()[0].on == "points" and eq.conditions()[1].at == {"x": [0.0]}


def test_no_exact_solution_gives_nan_metrics():
    eq = base(exact=None)
    assert not eq.has_exact and torch.isnan(eq.exact(torch.zeros(3, 2))).all()


def test_a_wrong_exact_solution_is_caught_and_can_be_allowed():
    with pytest.raises(PinnConfigError, match="equation.exact does not satisfy equation.residual"):
        base(exact="exp(-pi**2*t)*sin(pi*x)")
    assert base(exact="exp(-pi**2*t)*sin(pi*x)", check_exact=False).has_exact


MALICIOUS = [
    ("__import__('os').system('echo pwned')", "attribute access '.system'"),
    ("__import__('os')", "unknown function '__import__'"),
    ("u.__class__", "attribute access '.__class__'"),
    ("eval('1')", "unknown function 'eval'"),
    ("getattr(u, 'x')", "unknown function 'getattr'"),
    ("u_t - alpha*u_xx + os", "unknown symbol 'os'"),
    ("u[0]", "subscript"),
    ("(lambda: 1)()", "lambda"),
    ("u_t - 'alpha'", "the literal 'alpha'"),
    ("[u for u in ()]", "ListComp"),
    ("u_t - alpha*u_xx; import os", "cannot be parsed"),
    ("sin(x, key=1)", "plain arguments"),
    ("u_t - alpha*u_xx + _u", "unknown symbol '_u'"),
]


@pytest.mark.parametrize("text, why", MALICIOUS, ids=[m[0] for m in MALICIOUS])
def test_malicious_or_bad_expressions_are_parse_errors(text, why, tmp_path):
    marker = tmp_path / "pwned"
    text = text.replace("echo pwned", f"touch {marker}")
    with pytest.raises(PinnConfigError) as err:
        base(residual=text)
    msg = str(err.value)
    assert msg.startswith("equation.residual: ") and why in msg and "\n" not in msg
    assert repr(text) in msg or "cannot be parsed" in msg
    assert not marker.exists()


@pytest.mark.parametrize("key, spec, why", [
    ("value", {"conditions": [{"where": "initial", "value": "sin(pi*y)"}]},
     "equation.conditions[0].value: 'sin(pi*y)': unknown symbol 'y'"),
    ("where", {"conditions": [{"where": "x === 1", "value": "0"}]}, "equation.conditions[0].where"),
    ("where-time", {"conditions": [{"where": "t == 0.5", "value": "0"}]},
     "equation.conditions[0].where='t == 0.5': a condition in time must be at the initial time t == 0"),
    ("unused-output", {"outputs": ["u", "v"], "exact": None}, "output 'v' appears in no residual"),
    ("input-n", {"inputs": ["x", "n"], "bounds": {"x": [0, 1], "n": [0, 1]}, "residual": "u_x + u_n", "exact": None,
                 "conditions": []}, "'n' is reserved (u_n is the normal derivative)"),
    ("ambiguous-input", {"inputs": ["x", "y", "xy"], "bounds": {"x": [0, 1], "y": [0, 1], "xy": [0, 1]},
                         "residual": "u_xy", "exact": None, "conditions": []},
     "equation.inputs: 'xy' is also x then y, so a derivative name such as u_xy would be ambiguous"),
    ("u_n", {"conditions": [{"where": "t == 0", "expr": "u_n", "value": "0"}]}, "'u_n' (a normal derivative) needs boundary"),
    ("key", {"conditions": [{"wher": "t == 0"}]}, "equation.conditions[0].wher is not known"),
    ("exact", {"exact": "exp(-alpha*t)*sin(pi*z)"}, "equation.exact: 'exp(-alpha*t)*sin(pi*z)': unknown symbol 'z'"),
    ("param", {"params": {"sin": 1.0}}, "'sin' is not a valid parameter name"),
    ("bounds", {"bounds": {"x": [0, 1]}}, "equation.bounds lacks t"),
    ("residual", {"residual": ""}, "equation.residual is empty"),
    ("function-value", {"residual": "u_t - alpha*u_xx + log"}, "'log' is a function"),
    ("output", {"conditions": [{"where": "initial", "output": "v", "value": "0"}]}, "output='v' is not an output"),
    ("compare", {"residual": "u_t - alpha*u_xx + (x < 1)"}, "comparison is only allowed in a condition's 'where'"),
])
def test_errors_name_the_key_expression_and_symbol(key, spec, why):
    with pytest.raises(PinnConfigError) as err:
        base(**spec)
    assert why in str(err.value) and "\n" not in str(err.value)


def test_cli_reports_a_bad_expression_in_one_line(tmp_path):
    root = user_dir(tmp_path, {"evil": MY_HEAT.replace('"u_t - alpha*u_xx"', '"__import__(\'os\').getcwd()"')})
    res = subprocess.run([sys.executable, "-m", "pinn_cli", "train", "-cd", str(root), "equation=evil",
                          f"hydra.run.dir={tmp_path / 'run'}", "trainer.progress=false"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert "attribute access '.getcwd'" in lines[-1] and "Traceback" not in res.stderr


@pytest.mark.slow
def test_cli_trains_a_yaml_equation_from_a_config_dir(tmp_path):
    """The file as the issue writes it (no ``name:``): the run is named after the file."""
    root = user_dir(tmp_path, {"my_heat": MY_HEAT.replace("name: my_heat\n", "")})
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "pinn_cli", "train", "-cd", str(root), "equation=my_heat",
                          f"hydra.run.dir={run}", "trainer.steps=40", "optimizer.adam_steps=30",
                          "sampler.n_interior=200", "trainer.progress=false", "device=cpu"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["equation"] == "my_heat" and metrics["rel_l2"] < 1.0


@pytest.mark.slow
def test_yaml_heat_trains_like_the_built_in_heat(tmp_path):
    """The same equation, seed and settings: the YAML heat equation reaches the built-in one's error."""
    root = user_dir(tmp_path, {"yaml_heat": """\
        defaults: [custom]
        name: yaml_heat
        inputs: [x, t]
        bounds: {x: [0, 1], t: [0, 1]}
        params: {alpha: 0.05}
        residual: "u_t - alpha*u_xx"
        conditions:
          - {where: "t == 0", value: "sin(pi*x)"}
          - {where: boundary, value: "0"}
        exact: "exp(-alpha*pi**2*t)*sin(pi*x)"
        """})
    short = ["device=cpu", "precision=float64", "trainer.steps=500", "optimizer.adam_steps=250",
             "sampler.n_interior=400", "sampler.n_boundary=100", "sampler.n_initial=100", "network.width=20",
             "trainer.eval_points=2000", "trainer.log_every=50", "trainer.eval_every=100", "seed=3"]
    built_in = run_training(make_cfg("equation=heat", *short), tmp_path / "a")
    yaml = run_training(make_cfg("equation=yaml_heat", searchpath(root), *short), tmp_path / "b")
    assert built_in["rel_l2"] < 2e-2
    ratio = yaml["rel_l2"] / built_in["rel_l2"]
    assert 1 / 1.5 < ratio < 1.5, (yaml["rel_l2"], built_in["rel_l2"])


@pytest.mark.parametrize("where", ["residual", "value", "where"])
def test_min_and_max_of_fields_and_coordinates(where):
    """min/max of non-constant arguments compile (sympy's Min/Max are not sympy.Function subclasses)."""
    spec = {"residual": "u_t - alpha*u_xx + max(u_x, 0) - max(u_x, 0)",
            "value": "min(x, 2) * 0 + sin(pi*x)",  # x <= 1: min(x, 2) = x
            "where": "initial and max(x, 0.5) >= 0"}
    if where == "residual":
        eq = base(residual=spec["residual"])
        p = torch.rand(9, 2, dtype=torch.float64)
        f = AutogradFields(eq.exact, p, eq.inputs, eq.outputs)
        assert float(eq.residual(f).detach().abs().max()) < 1e-12
    else:
        cond = {"where": spec["where"] if where == "where" else "initial", "value": spec["value"]}
        eq = base(conditions=[cond])
        x = torch.stack([torch.linspace(0, 1, 20, dtype=torch.float64), torch.zeros(20, dtype=torch.float64)], 1)
        c = eq.conditions()[0]
        r = c.residual(AutogradFields(eq.exact, x, eq.inputs, eq.outputs))
        assert float(r.detach().abs().max()) < 1e-12
        if where == "where":
            assert c.select(x.numpy()).all()


def test_a_condition_that_selects_no_point_is_named(tmp_path):
    eq = base(conditions=[{"where": "initial", "value": "sin(pi*x)"}, {"name": "right", "where": "x == 2", "value": "0"}])
    setup = build(make_cfg("equation=custom", "device=cpu", "precision=float64"))
    setup.problem.equation = eq
    from pinn_cli.problem import Problem

    problem = Problem(eq, setup.domain, setup.net, setup.problem.engine, setup.problem.sampler, setup.device,
                      setup.dtype)
    with pytest.raises(PinnConfigError, match="condition 'right': its 'where' selects none of the boundary points"):
        problem.sample(np.random.default_rng(0))


def test_a_yaml_equation_without_defaults_custom_is_told_what_to_add():
    from pinn_cli.training import build_equation

    with pytest.raises(PinnConfigError, match=r"has no _target_; an equation written in YAML starts with `defaults: \[custom\]`"):
        build_equation(OmegaConf.create({"name": "mine", "inputs": ["x"], "residual": "u_x"}))


def test_unused_params_are_those_no_expression_names():
    """A param counts as used where a residual, a condition's where/expr/value or exact names it."""
    where = [{"where": "initial", "value": "sin(pi*x)"}, {"where": "x == L", "value": "c"}]
    eq = base(params={"alpha": 0.1, "L": 1.0, "c": 0.0, "beta": 2.0}, conditions=where, exact=None)
    assert eq.unused_params() == ("beta",)
    assert base().unused_params() == ()


def test_a_param_added_on_the_command_line_that_nothing_uses_is_refused():
    """``+equation.params.alpah=0.1`` was accepted and ignored; it is refused with the equation's
    params and the nearest as a guess."""
    from pinn_cli.config import added_params, check_added_params

    overrides = ["equation=custom", "+equation.params.alpah=0.1"]
    assert added_params(overrides) == ["alpah"]
    with pytest.raises(PinnConfigError) as err:
        check_added_params(make_cfg(*overrides), added_params(overrides))
    assert str(err.value) == ("equation.params.alpah is not a parameter of equation custom (no expression uses "
                              "it); did you mean equation.params.alpha? its params: alpha")


def test_params_a_file_declares_or_an_expression_needs_are_never_refused(tmp_path):
    """Only a param that the command line adds (``+``: the files lack it) and nothing uses is refused:
    the file's own unused param, a param its residual needs from the command line, and one an
    interpolation of the config refers to all run."""
    from pinn_cli.config import added_params, check_added_params

    root = user_dir(tmp_path, {"mine": """\
        defaults: [custom]
        inputs: [x, t]
        bounds: {x: [0, "${equation.params.length}"], t: [0, 1]}
        params: {alpha: 0.1, spare: 3.0}
        residual: "u_t - alpha*beta*u_xx"
        conditions: [{where: "t == 0", value: "sin(pi*x)"}]
        """})
    for overrides in (["+equation.params.beta=1", "+equation.params.length=1"],
                      ["+equation.params={beta: 1, length: 2}"]):
        overrides = ["equation=mine", searchpath(root), *overrides]
        check_added_params(make_cfg(*overrides), added_params(overrides))
    overrides = ["equation=mine", searchpath(root), "+equation.params.beta=1", "+equation.params.length=1",
                 "+equation.params.gamma=1"]
    with pytest.raises(PinnConfigError, match=r"params.gamma is not a .* its params: alpha, spare, beta, length$"):
        check_added_params(make_cfg(*overrides), added_params(overrides))
    rel = user_dir(tmp_path / "rel", {"rel": """\
        defaults: [custom]
        inputs: [x, t]
        bounds: {x: [0, 1], t: [0, 1]}
        params: {alpha: "${.base}"}
        residual: "u_t - alpha*u_xx"
        conditions: [{where: "t == 0", value: "sin(pi*x)"}]
        """})
    for overrides in (["+equation.params.base=0.2"], ["+equation.params={base: 0.2}"]):  # a relative interpolation
        overrides = ["equation=rel", searchpath(rel), *overrides]
        check_added_params(make_cfg(*overrides), added_params(overrides))


def test_cli_refuses_a_misspelt_param_in_one_line_before_training(tmp_path):
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "pinn_cli", "train", "equation=custom", "+equation.params.alpah=0.1",
                          f"hydra.run.dir={run}", "trainer.progress=false", "device=cpu"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "pinn train: error: equation.params.alpah is not a parameter of equation custom (no expression uses it); "
        "did you mean equation.params.alpha? its params: alpha"]
    assert not (run / "checkpoints").exists()


MINE = """\
    defaults: [custom]
    inputs: [x, t]
    bounds: {x: [0, "${equation.params.length}"], t: [0, 1]}
    params: {alpha: 0.1, spare: 3.0, length: 1.0}
    residual: "u_t - alpha*beta*u_xx"
    conditions: [{where: "t == 0", value: "sin(pi*x)"}]
    """


def _check_forced(*overrides: str, declared=None) -> None:
    """``check_added_params`` as ``pinn train`` calls it, the ``++`` names' declarations composed by Hydra."""
    from hydra import initialize_config_dir

    from pinn_cli.config import added_params, check_added_params, declared_params
    from pinn_cli.paths import config_dir

    cfg, overrides = make_cfg(*overrides), ["trainer.progress=false", *overrides]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        check_added_params(cfg, added_params(overrides), added_params(overrides, force=True),
                           declared or (lambda: declared_params("train", overrides)))


def test_a_param_forced_with_double_plus_that_nothing_uses_is_refused():
    """``++equation.params.alpah=0.1`` (add or override) was accepted and ignored; it is refused like ``+``."""
    from pinn_cli.config import added_params

    assert added_params(["++equation.params.alpah=0.1", "+equation.params.beta=1"], force=True) == ["alpah"]
    assert added_params(["++equation.params={a: 1, b: 2}"], force=True) == ["a", "b"]
    with pytest.raises(PinnConfigError) as err:
        _check_forced("equation=custom", "++equation.params.alpah=0.1")
    assert str(err.value) == ("equation.params.alpah is not a parameter of equation custom (no expression uses "
                              "it); did you mean equation.params.alpha? its params: alpha")


def test_double_plus_keeps_params_a_file_declares_or_something_uses(tmp_path):
    """``++`` on a param the file declares (used or not), or on one an expression or interpolation needs,
    runs; only a name that the config lacks without the ``++`` and that nothing uses is refused. The
    declarations are composed again only for a name nothing uses."""
    from pinn_cli.config import without_forced_params

    root = user_dir(tmp_path, {"mine": MINE})
    mine = ["equation=mine", searchpath(root), "+equation.params.beta=1"]

    def never() -> set[str]:
        raise AssertionError("composed again for a param an expression or interpolation uses")

    _check_forced("equation=custom", "++equation.params.alpha=0.2", declared=never)
    _check_forced(*mine, "++equation.params.length=2", "++equation.params.alpha=0.2", declared=never)
    _check_forced(*mine, "++equation.params.spare=4")
    _check_forced(*mine, "++equation.params={spare: 4, length: 2}")
    with pytest.raises(PinnConfigError, match=r"params\.sapre is not a .* did you mean equation\.params\.spare\?"):
        _check_forced(*mine, "++equation.params.sapre=4")
    with pytest.raises(PinnConfigError, match=r"params\.gamma is not a .* its params: alpha, spare, length, beta$"):
        _check_forced(*mine, "++equation.params={spare: 4, gamma: 1}")
    assert without_forced_params([*mine, "++equation.params.x=1", "++trainer.steps=3", "++equation.params={a: 1}"]) \
        == [*mine, "++trainer.steps=3"]


def test_cli_refuses_a_double_plus_param_nothing_uses_and_keeps_a_declared_one(tmp_path):
    """Through ``pinn train``: the declarations come from the same search path (``hydra.searchpath``)."""
    root = user_dir(tmp_path, {"mine": MINE})
    args = [sys.executable, "-m", "pinn_cli", "train", "equation=mine", searchpath(root), "+equation.params.beta=1",
            "trainer.progress=false", "device=cpu", "trainer.steps=2", "optimizer=adam", "trainer.log_every=1",
            "trainer.eval_every=1", "trainer.checkpoint_every=1", "sampler.n_interior=16", "sampler.n_initial=8",
            "trainer.eval_points=50"]
    bad = subprocess.run([*args, "++equation.params.sapre=4", f"hydra.run.dir={tmp_path / 'bad'}"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "pinn train: error: equation.params.sapre is not a parameter of equation mine (no expression uses it); "
        "did you mean equation.params.spare? its params: alpha, spare, length, beta"]
    assert not (tmp_path / "bad" / "checkpoints").exists()
    good = subprocess.run([*args, "++equation.params.spare=4", f"hydra.run.dir={tmp_path / 'good'}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert good.returncode == 0, good.stderr[-2000:]
    assert (tmp_path / "good" / "metrics.json").is_file()
