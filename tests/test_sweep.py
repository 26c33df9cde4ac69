"""The parent of a sweep: every job's return kept, every failed job named, multirun.yaml put back when
every job was refused (the CLI side: tests/test_cli.py)."""
from __future__ import annotations

import pytest
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from pinn_cli import cli
from pinn_cli.errors import PinnConfigError, RunDirInUse, SweepFailed
from pinn_cli.hydra_record import keep_earlier_multirun
from pinn_cli.sweep import SweepReturns, end_failed_sweep, kept_job_returns


def job(num: int, overrides: list[str], error: BaseException | None = None) -> JobReturn:
    return JobReturn(overrides=overrides, hydra_cfg=OmegaConf.create({"hydra": {"job": {"num": num}}}),
                     status=JobStatus.FAILED if error else JobStatus.COMPLETED, _return_value=error or 0.5)


def swept_dir(tmp_path, text: str):
    """A sweep directory whose multirun.yaml was ``text`` when the re-run began and is now the re-run's."""
    tmp_path.mkdir(parents=True)
    (tmp_path / "multirun.yaml").write_text(text)
    keep_earlier_multirun(tmp_path)
    (tmp_path / "multirun.yaml").write_text("the re-run's\n")
    return tmp_path


def test_every_failed_job_is_named_with_the_overrides_that_set_it_apart():
    bad, odd = PinnConfigError("seed=-1 is invalid"), RuntimeError("boom")
    kept = SweepReturns(None, [job(0, ["seed=-1", "a=1"], bad), job(1, ["seed=0", "a=1"]),
                               job(2, ["seed=2", "a=1"], odd)])
    assert end_failed_sweep(kept).jobs == [("job 0 (seed=-1)", bad), ("job 2 (seed=2)", odd)]
    assert end_failed_sweep(SweepReturns(None, [job(0, ["seed=0"])])) is None
    assert end_failed_sweep(SweepReturns(None, [job(4, ["seed=0"], bad)])).jobs == [("job 4", bad)]


def test_multirun_yaml_comes_back_only_when_every_job_was_refused(tmp_path):
    """Refused jobs wrote nothing; a job that ran, or failed on a bad value in a folder of its own, left
    something the re-run's multirun.yaml describes, so that file stays."""
    refused = RunDirInUse("run directory 0 already holds checkpoints")
    sweep = swept_dir(tmp_path / "all", "the first sweep's\n")
    end_failed_sweep(SweepReturns(sweep, [job(0, ["w=1"], refused), job(1, ["w=2"], refused)]))
    assert (sweep / "multirun.yaml").read_text() == "the first sweep's\n"
    for others in ([job(1, ["w=2"])], [job(1, ["w=2"], PinnConfigError("w=2 is invalid"))]):
        sweep = swept_dir(tmp_path / str(len(list(tmp_path.iterdir()))), "the first sweep's\n")
        end_failed_sweep(SweepReturns(sweep, [job(0, ["w=1"], refused), *others]))
        assert (sweep / "multirun.yaml").read_text() == "the re-run's\n"
        assert [p.read_text() for p in (sweep / ".earlier").glob("*/multirun.yaml")] == ["the first sweep's\n"]


def test_the_launcher_hands_its_returns_over_and_hydra_is_left_as_it_was(monkeypatch):
    """Inside ``kept_job_returns`` the launcher a sweeper gets from Hydra passes its returns on, and the
    sweep directory is the config's; outside, Hydra's own ``instantiate_launcher`` is back."""
    class Fake:
        def launch(self, overrides, initial_job_idx):
            return [job(initial_job_idx + i, list(o)) for i, o in enumerate(overrides)]

    def fake_instantiate(self, hydra_context, task_function, config):
        return Fake()

    monkeypatch.setattr(Plugins, "instantiate_launcher", fake_instantiate)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": "/sweeps/${name}"}}, "name": "a"})
    with kept_job_returns() as kept:
        launcher = Plugins.instance().instantiate_launcher(hydra_context=None, task_function=None, config=config)
        out = launcher.launch([["a=1"], ["a=2"]], 3)
    assert Plugins.instantiate_launcher is fake_instantiate
    assert [r.overrides for r in kept.returns] == [["a=1"], ["a=2"]] == [r.overrides for r in out]
    assert str(kept.sweep_dir) == "/sweeps/a"


@pytest.mark.parametrize("errors, code", [((PinnConfigError("w=-1 is invalid"),) * 2, 2),
                                          ((PinnConfigError("w=-1 is invalid"), RuntimeError("boom")), 1)])
def test_the_cli_says_one_line_per_failed_job(monkeypatch, capsys, errors, code):
    """Bad values exit 2, as a single run's would; an unexpected error among them exits 1."""
    def train(argv):
        raise SweepFailed([(f"job {i}", e) for i, e in enumerate(errors)])

    monkeypatch.setattr(cli, "_commands", lambda: {"train": train})
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # restored after the test: cli.main sets it to 1
    with pytest.raises(SystemExit) as out:
        cli.main(["train", "-m"])
    assert out.value.code == code
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "pinn train: error: job 0: w=-1 is invalid" and len(lines) == 2
    assert lines[1] == ("pinn train: error: job 1: w=-1 is invalid" if code == 2 else
                        "pinn train: error: job 1: RuntimeError: boom (set HYDRA_FULL_ERROR=1 for the traceback)")


def test_failed_jobs_of_a_sweep_that_went_on_are_warned_about(capsys):
    """Optuna's sweeper tolerates failed trials (max_failure_rate) and the sweep ends well: each failed job
    still gets a line on stderr, as Hydra's own line (hidden by pinn) used to give."""
    from pinn_cli.sweep import say_tolerated

    bad = PinnConfigError("network.width=-1 is invalid; it must be a positive integer")
    say_tolerated(SweepReturns(None, [job(0, ["network.width=8"]), job(1, ["network.width=-1"], bad)]))
    assert capsys.readouterr().err.splitlines() == [
        "pinn train: warning: job 1 (network.width=-1) failed (the sweep went on): " + str(bad)]
    say_tolerated(SweepReturns(None, [job(0, ["network.width=8"])]))
    assert capsys.readouterr().err == ""
