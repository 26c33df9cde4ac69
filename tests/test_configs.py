"""Every config file composes and builds into working objects."""
from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, EQUATIONS, make_cfg

from pinn_cli.training import build


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("equation", EQUATIONS)
def test_equation_config_builds(equation):
    setup = build(make_cfg(f"equation={equation}", "device=cpu"))
    assert setup.equation.name == equation
    assert setup.net(setup.evaluator.x[:5]).shape == (5, len(setup.equation.outputs))


@pytest.mark.parametrize("sampler", _names("sampler"))
def test_sampler_config_builds(sampler):
    setup = build(make_cfg(f"sampler={sampler}", "sampler.n_interior=64", "device=cpu"))
    import numpy as np

    setup.problem.sample(np.random.default_rng(0))
    x = setup.problem.terms[0].x
    assert 49 <= len(x) <= 64 and bool(((x >= 0) & (x <= 1)).all())


@pytest.mark.parametrize("optimizer", _names("optimizer"))
def test_optimizer_config_builds(optimizer):
    from pinn_cli.optim import OptimizerSchedule

    cfg = make_cfg(f"optimizer={optimizer}", "device=cpu")
    setup = build(cfg)
    sched = OptimizerSchedule(cfg.optimizer, list(setup.net.parameters()), 10)
    assert sched.phase(0) in ("adam", "lbfgs")


@pytest.mark.parametrize("domain", _names("domain"))
def test_domain_config_builds(domain):
    from pinn_cli.domains import DOMAINS

    fits = {"auto": "heat", "interval": "ode_bvp", "rectangle": "poisson2d", "box": "poisson2d",
            "interval_time": "heat", "rectangle_time": "heat2d", "box_time": "heat",
            "disk": "helmholtz", "disk_time": "heat2d", "polygon": "poisson2d", "polygon_time": "heat2d"}
    equation = fits[domain]
    if equation is None:
        pytest.skip("no built-in equation on this domain yet")
    setup = build(make_cfg(f"equation={equation}", f"domain={domain}", "device=cpu"))
    assert setup.domain.dim == len(setup.equation.inputs)
    assert domain == "auto" or domain in DOMAINS


def test_network_config_builds():
    for act in ("tanh", "sin", "gelu", "silu", "identity"):
        setup = build(make_cfg(f"network.activation={act}", "device=cpu"))
        assert sum(p.numel() for p in setup.net.parameters()) > 0


@pytest.mark.parametrize("override, expected", [
    ("trainer.causal_eps=abc", "trainer.causal_eps='abc' is invalid"),
    ("analysis.hessian_every=-1", "analysis.hessian_every=-1 is invalid"),
    ("analysis.hessian_every=abc", "analysis.hessian_every='abc' is invalid"),
    ("trainer.progress=maybe", "trainer.progress='maybe' is invalid; it must be true or false"),
    ("trainer.tf32=maybe", "trainer.tf32='maybe' is invalid"),
    ("++equation.weights.pde=-1", "equation.weights.pde=-1 is invalid; it must be a finite non-negative number"),
    ("optimizer.lr=inf", "optimizer.lr=inf is invalid; it must be a finite positive number"),
    ("equation.alpha=inf", "equation.alpha=inf is invalid; it must be a finite number"),
    ("seed=-1", "seed=-1 is invalid; it must be an integer from 0 to 2"),
    ("seed=99999999999999999999", "seed=99999999999999999999 is invalid"),
])
def test_bad_values_name_their_key(override, expected):
    from pinn_cli.errors import PinnConfigError

    with pytest.raises(PinnConfigError, match=expected.replace("(", r"\(").replace(".", r"\.")):
        build(make_cfg(override, "device=cpu"))


def test_lbfgs_history_size_must_be_positive():
    from pinn_cli.errors import PinnConfigError
    from pinn_cli.optim import OptimizerSchedule

    cfg = make_cfg("optimizer=adam_lbfgs", "optimizer.lbfgs.history_size=0", "device=cpu")
    with pytest.raises(PinnConfigError, match="optimizer.lbfgs.history_size=0 is invalid"):
        OptimizerSchedule(cfg.optimizer, list(build(cfg).net.parameters()), 10)


def test_every_documented_key_is_known_and_a_typo_is_not():
    from pinn_cli.config import check_keys
    from pinn_cli.errors import PinnConfigError
    from pinn_cli.paths import config_dir

    for name in ("mlp", "fourier_mlp", "resnet", "modified_mlp"):
        for eq in ("heat", "burgers", "helmholtz"):
            check_keys(make_cfg(f"network={name}", f"equation={eq}"), config_dir())
    for typo, hint in (("+network.widht=3", "network.width"), ("+optimizer.lbfgs.histroy=3", "history_size"),
                       ("+sed=1", "seed")):
        with pytest.raises(PinnConfigError, match=hint):
            check_keys(make_cfg(typo), config_dir())


def test_adam_uses_the_fused_kernel_and_matches_plain_adam():
    from pinn_cli.optim import fused_adam

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(7, 5, dtype=torch.float64)), torch.nn.Parameter(torch.randn(5, dtype=torch.float64))]
    b = [torch.nn.Parameter(t.detach().clone()) for t in a]
    fused, plain = fused_adam(a, 1e-2), torch.optim.Adam(b, lr=1e-2)
    assert fused.defaults["fused"] is True
    for _ in range(20):
        for pa, pb in zip(a, b):
            g = torch.sin(3 * pa.detach()) + pa.detach() ** 2
            pa.grad, pb.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for pa, pb in zip(a, b):
        torch.testing.assert_close(pa, pb, rtol=1e-12, atol=1e-12)
        assert not torch.equal(pa, torch.zeros_like(pa))
