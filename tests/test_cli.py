"""The command line as a user types it: argv handling, Hydra flags, multirun and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

FAST = ["trainer.steps=6", "trainer.log_every=2", "trainer.eval_every=3", "trainer.checkpoint_every=3",
        "sampler.n_interior=64", "sampler.n_boundary=16", "sampler.n_initial=16", "optimizer.adam_steps=4",
        "trainer.eval_points=400"]


def pinn(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pinn_cli", *args], cwd=cwd or REPO, capture_output=True, text=True,
        timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    res = pinn("--version")
    assert res.returncode == 0 and res.stdout.strip() == f"pinn {version('pinn-cli')}"


def test_top_level_help():
    res = pinn("--help")
    assert res.returncode == 0 and "train" in res.stdout and "list" in res.stdout


def test_train_help_and_cfg_job():
    res = pinn("train", "--help")
    assert res.returncode == 0 and "equation: advection, burgers, custom, diffusion_reaction, heat, heat2d," in res.stdout
    res = pinn("train", "--cfg", "job", "equation=poisson2d", "network.width=7")
    assert res.returncode == 0
    assert "Poisson2D" in res.stdout and "width: 7" in res.stdout


def test_list_names_every_equation():
    res = pinn("list")
    assert res.returncode == 0
    for name in ("heat", "poisson2d", "ode_decay", "ode_bvp", "lhs", "sobol", "adam_lbfgs", "identity"):
        assert name in res.stdout
    lines = res.stdout.splitlines()  # piped: one tab-separated line per entry, so grep finds whole entries
    assert all(len(ln.split("\t")) == 3 for ln in lines)
    assert {tuple(ln.split("\t")[:2]) for ln in lines} >= {("equation", "heat"), ("network", "modified_mlp")}
    assert "usage: pinn list" in pinn("list", "--help").stdout


def test_list_shows_a_users_config_directory(tmp_path):
    (tmp_path / "equation").mkdir()
    (tmp_path / "equation" / "mine.yaml").write_text("# my advection\ndefaults: [custom]\n")
    (tmp_path / "equation" / "bare.yaml").write_text("defaults: [custom]\n")
    lines = set(pinn("list", "-cd", str(tmp_path)).stdout.splitlines())
    assert f"equation\tmine\tmy advection [{tmp_path}]" in lines
    assert any(ln.startswith("equation\tbare\t(no description: the file's first line should be") for ln in lines)
    assert "equation\theat\t1D heat equation" in "\n".join(lines)
    (tmp_path / "equation" / "heat.yaml").write_text("# my heat\n")  # Hydra takes the shipped heat first
    out = pinn("list", "-cd", str(tmp_path)).stdout
    assert f"shadowed\tequation/heat\t{tmp_path}: not used, the shipped equation=heat comes first" in out


def test_train_writes_a_complete_run_directory(tmp_path):
    run = tmp_path / "r1"
    res = pinn("train", "equation=heat", "network.width=8", "optimizer.lr=3e-3", "seed=1", "device=cpu",
               "precision=float64", f"hydra.run.dir={run}", *FAST)
    assert res.returncode == 0, res.stderr
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/last.pt", "checkpoints/best.pt",
                 "history.csv", "metrics.json", "loss_curve.png", "solution.png", "train.log"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("rel_l2", "max_abs_error", "rmse", "steps", "wall_time_s", "n_params", "device",
                "final_loss", "equation"):
        assert key in metrics
    assert metrics["steps"] == 6 and metrics["equation"] == "heat" and metrics["device"] == "cpu"
    header = (run / "history.csv").read_text().splitlines()[0].split(",")
    assert header == ["step", "time_s", "loss", "loss_pde", "loss_ic", "loss_bc", "lr", "rel_l2"]
    assert "rel L2" in res.stdout and str(run) in res.stdout.replace("\n", "")


def test_multirun_gives_each_job_its_own_directory(tmp_path):
    """-m may come after an override, as users type it (Hydra's own parser wants it first)."""
    res = pinn("train", f"hydra.sweep.dir={tmp_path}", "-m", "equation=heat,poisson2d", *FAST)
    assert res.returncode == 0, res.stderr
    for job in ("0", "1"):
        assert (tmp_path / job / "metrics.json").is_file()
    eqs = {json.loads((tmp_path / j / "metrics.json").read_text())["equation"] for j in ("0", "1")}
    assert eqs == {"heat", "poisson2d"}


def test_each_failing_job_of_a_sweep_says_why_as_it_fails(tmp_path):
    """Each failing job's line on stdout as it fails; at the end, stderr names every failed job (number,
    the overrides that set it apart, its reason), one line each (Hydra's sweeper raises the first alone)."""
    fast = [a for a in FAST if not a.startswith("trainer.steps=")]
    res = pinn("train", "-m", "trainer.steps=-1,3,-2", f"hydra.sweep.dir={tmp_path}", *fast)
    assert res.returncode == 2
    for bad in ("-1", "-2"):
        assert f"trainer.steps={bad} is invalid" in res.stdout
    assert (tmp_path / "1" / "metrics.json").is_file() and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"pinn train: error: job {job} (trainer.steps={bad}): trainer.steps={bad} is invalid; it must be a "
        "non-negative integer" for job, bad in (("0", "-1"), ("2", "-2"))]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("equation=nope", "equation='nope' is not known; choose from: advection, burgers, custom, diffusion_reaction, heat,"),
        ("sampler.n_interior=-5", "sampler.n_interior=-5 is invalid; it must be a positive integer"),
        ("network.depth=0", "network.depth=0 is invalid; it must be a positive integer"),
        ("device=cuda", "device=cuda is not available"),
        ("optimizer.lr=abc", "optimizer.lr='abc' is invalid; it must be a finite positive number"),
        ("network.activation=relu", "network.activation='relu' is not known; choose from: tanh, sin"),
        ("precision=float16", "precision='float16' is not known; choose from: float32, float64"),
        ("derivatives=magic", "derivatives='magic' is not known"),
        ("network.fourier_sigma=-1 network.fourier_features=8", "network.fourier_sigma=-1 is invalid"),
        ("trainer.causal_chunks=4 equation=poisson2d", "trainer.causal_chunks=4: equation poisson2d has no time input"),
        ("+trainer.stpes=10", "trainer.stpes is not a key of trainer; did you mean trainer.steps?"),
        ("trainer.stpes=10", "trainer.stpes is not a key of trainer; did you mean trainer.steps?"),
        ("trainer.zzz=1", "trainer.zzz is not a key of trainer; known: causal_chunks,"),
        ("equation._target_=pinn_cli.equations.heat.Heet",
         "equation._target_='pinn_cli.equations.heat.Heet' cannot be imported: module pinn_cli.equations.heat has no Heet"),
        ("trainer.ensemble=true", "trainer.ensemble=True is invalid; it must be a positive integer"),
        ("--config-name nosuch", "config 'nosuch' (--config-name) not found in"),
    ],
)
def test_bad_input_is_one_line_without_traceback(tmp_path, override, expected):
    if override == "device=cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    res = pinn("train", f"hydra.run.dir={tmp_path / 'run'}", *FAST, *override.split())
    assert res.returncode != 0
    assert "Traceback" not in res.stderr + res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert expected in lines[0]
    assert expected not in res.stdout  # said once (train.log keeps it too)


@pytest.mark.parametrize("argv, expected", [
    (["a=1", "-m", "b=2,3", "--cfg", "job"], ["-m", "--cfg", "job", "a=1", "b=2,3"]),
    (["equation=burgers", "--info"], ["--info=all", "equation=burgers"]),  # a bare --info must not take an override
    (["x=1", "--info", "-cd", "DIR", "y=2"], ["--info=all", "-cd", "DIR", "x=1", "y=2"]),
    (["x=1", "--info", "defaults"], ["--info", "defaults", "x=1"]),
    (["network.width=8", "-p"], ["network.width=8", "-p"]),  # no value: argparse's own error, not a silent run
    (["x=1", "--config-di", "D"], ["x=1", "--config-di", "D"]),  # not Hydra's spelling: order kept
    (["x=1", "--config-dir=/t", "y=2"], ["--config-dir=/t", "x=1", "y=2"]),
])
def test_flags_move_ahead_of_the_overrides_with_their_values(argv, expected):
    from pinn_cli.cli import flags_first

    assert flags_first(argv) == expected


def test_a_sweep_with_cfg_is_one_line(tmp_path):
    res = pinn("train", "-m", "--cfg", "job", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().endswith("-m cannot be combined with --cfg or --info"), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "sweep").exists()


def test_hydra_full_error_shows_the_traceback_of_pinns_own_checks(tmp_path):
    res = pinn("train", f"hydra.run.dir={tmp_path / 'run'}", *FAST, "sampler.n_interior=-5", env={"HYDRA_FULL_ERROR": "1"})
    assert res.returncode == 1 and "Traceback" in res.stderr
    assert "PinnConfigError: sampler.n_interior=-5 is invalid" in res.stderr


@pytest.mark.parametrize("missing", ["hydra/launcher/joblib", "hydra/launcher/submitit_slurm", "hydra/sweeper/optuna"])
def test_a_missing_hydra_plugin_names_the_extra(missing):
    """Without the cluster extra, hydra/launcher=joblib read as a typo ("not known; choose from: basic, ...")."""
    from hydra.errors import MissingConfigException

    from pinn_cli.cli import _one_line

    group, _, name = missing.rpartition("/")
    err = MissingConfigException(f"In 'train': Could not find '{missing}'\n\nAvailable options in '{group}':\n"
                                 "\tbasic\n\tslurm_cpu\n\tslurm_gpu\n", missing)
    assert _one_line(err) == (f"Hydra's {group}={name} is not installed: it comes with the cluster extra: "
                              "pip install 'pinn-cli[cluster]' (make install has it)")


def test_unknown_command():
    res = pinn("frobnicate")
    assert res.returncode == 2 and "unknown command 'frobnicate'" in res.stderr


def test_wheel_ships_the_configs(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    if res.returncode != 0 and "hatchling" in res.stderr:
        pytest.skip("hatchling not installed in this environment")
    assert res.returncode == 0, res.stderr
    import zipfile

    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pinn_cli/configs/train.yaml" in names
    assert "pinn_cli/configs/equation/heat.yaml" in names


def test_a_failed_resume_keeps_the_earlier_hydra_record(tmp_path):
    """Hydra rewrites .hydra/ at every start: the record of the run that wrote the checkpoint is copied
    to .hydra/earlier/ first, so a failed resume into the same directory loses nothing."""
    import yaml

    run = tmp_path / "run"
    assert pinn("train", f"hydra.run.dir={run}", *FAST).returncode == 0
    first = (run / ".hydra" / "overrides.yaml").read_text()
    res = pinn("train", f"hydra.run.dir={run}", *FAST, "trainer.resume=auto", "network.width=7")
    assert res.returncode == 2 and "network.width" in res.stderr
    (kept,) = (run / ".hydra" / "earlier").iterdir()
    assert (kept / "overrides.yaml").read_text() == first
    assert "network.width=7" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())


def test_a_refused_sweep_leaves_the_jobs_records_as_they_were(tmp_path):
    """A sweep re-run into a sweep directory whose jobs hold checkpoints is refused; Hydra has by then
    rewritten each job's .hydra/, so the refusal puts the record of the run that trained back (else
    `pinn summarize` would show the refused settings next to the old results)."""
    sweep = tmp_path / "sweep"
    assert pinn("train", "-m", "network.width=6", f"hydra.sweep.dir={sweep}", *FAST).returncode == 0
    first = (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    res = pinn("train", "-m", "network.width=9", f"hydra.sweep.dir={sweep}", *FAST)
    assert res.returncode == 2 and "already holds checkpoints" in res.stderr
    assert (sweep / "0" / ".hydra" / "overrides.yaml").read_text() == first
    assert "network.width=6" in first


def test_a_refused_sweep_puts_its_multirun_yaml_back(tmp_path):
    """A re-run whose every job is refused trained nothing: the sweep's multirun.yaml, which Hydra rewrote,
    is put back from the copy kept in .earlier/. A re-run of which some jobs ran keeps the new file (it is
    the only description of the jobs it trained); the earlier one stays in .earlier/."""
    import yaml

    sweep = tmp_path / "sweep"
    assert pinn("train", "-m", "network.width=6", f"hydra.sweep.dir={sweep}", *FAST).returncode == 0
    first = (sweep / "multirun.yaml").read_text()
    res = pinn("train", "-m", "network.width=9", f"hydra.sweep.dir={sweep}", *FAST)
    assert res.returncode == 2
    assert (sweep / "multirun.yaml").read_text() == first
    assert [p.read_text() for p in (sweep / ".earlier").glob("*/multirun.yaml")] == [first]
    assert res.stderr.strip().splitlines() == [
        f"pinn train: error: job 0: run directory {sweep / '0'} already holds checkpoints of an earlier run; "
        "continue it with trainer.resume=auto, or start afresh in another hydra.sweep.dir"]

    res = pinn("train", "-m", "network.width=6,5", f"hydra.sweep.dir={sweep}", *FAST)
    assert res.returncode == 2 and res.stderr.count("pinn train: error: job 0 (network.width=6): ") == 1
    assert (sweep / "1" / "metrics.json").is_file()
    assert "network.width=6,5" in yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
    assert first in [p.read_text() for p in (sweep / ".earlier").glob("*/multirun.yaml")]
    assert "network.width=6" in (sweep / "0" / ".hydra" / "overrides.yaml").read_text()


def test_sigterm_ends_a_local_sweep_after_the_job_saves(tmp_path):
    """Without submitit nothing requeues a job: SIGTERM saves the running job and ends the sweep."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "pinn_cli", "train", "-m", "seed=0,1", f"hydra.sweep.dir={tmp_path}", "optimizer=adam", "trainer.compile=false",
         "trainer.steps=1000000", "trainer.log_every=10", "trainer.progress=false", "network.width=8",
         "sampler.n_interior=32", "sampler.n_boundary=8", "sampler.n_initial=8", "trainer.eval_points=100"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    log = tmp_path / "0" / "train.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "] - step " in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert json.loads((tmp_path / "0" / "metrics.json").read_text())["status"] == "preempted"
    assert (tmp_path / "0" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "1").exists()
    assert "later jobs of the sweep did not run" in err and "Traceback" not in err


@pytest.mark.parametrize("name, precision, expected", [
    ("auto", "float64", "cpu"), ("auto", "float32", "mps"), ("mps", "float32", "mps"),
    ("mps", "float64", "device=mps has no float64; add precision=float32, or use device=cpu")])
def test_mps_is_not_given_float64(monkeypatch, name, precision, expected):
    """MPS has no float64 (the default precision): auto passes it by, an explicit mps says why in one line."""
    import torch

    from pinn_cli.config import PRECISIONS, resolve_device
    from pinn_cli.errors import PinnConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    if expected.startswith("device="):
        with pytest.raises(PinnConfigError, match=expected):
            resolve_device(name, PRECISIONS[precision])
    else:
        assert resolve_device(name, PRECISIONS[precision]).type == expected
