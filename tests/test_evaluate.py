"""``pinn evaluate``: the metrics recomputed from a checkpoint equal the training run's; bad run
directories fail with one line."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
from conftest import make_cfg
from test_cli import pinn

from pinn_cli import checkpoint
from pinn_cli.commands import evaluate
from pinn_cli.errors import PinnConfigError, PinnError
from pinn_cli.training import run_training

FAST = ["device=cpu", "precision=float64", "network.width=8", "trainer.steps=40", "optimizer.adam_steps=25",
        "trainer.log_every=10", "trainer.eval_every=20", "trainer.eval_points=400", "sampler.n_interior=80",
        "sampler.n_boundary=24"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    run_training(make_cfg("equation=poisson2d", *FAST), run)
    return run


def fresh_copy(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def test_metrics_equal_the_training_run(trained, tmp_path):
    run = fresh_copy(trained, tmp_path)
    before = json.loads((run / "metrics.json").read_text())
    png = run / "solution.png"
    png.unlink()
    evaluate.main([str(run), "--checkpoint", "last.pt"])  # last.pt is the model metrics.json describes
    after = json.loads((run / "metrics.json").read_text())
    for key in ("rel_l2", "max_abs_error", "rmse"):
        assert after[key] == before[key], key           # bit for bit
    assert after["evaluate"]["matches_training"] is True
    assert after["evaluate"]["checkpoint"] == "checkpoints/last.pt" and after["evaluate"]["step"] == 40
    assert {k: after[k] for k in before} == before      # nothing else changed
    assert png.is_file() and (run / "loss_curve.png").is_file()


def test_default_checkpoint_is_best_then_last(trained, tmp_path):
    run = fresh_copy(trained, tmp_path)
    evaluate.main([str(run)])
    out = json.loads((run / "metrics.json").read_text())
    assert out["evaluate"]["checkpoint"] == "checkpoints/best.pt"
    assert out["evaluate"]["matches_training"] is (out["evaluate"]["step"] == out["steps"])
    (run / "checkpoints/best.pt").unlink()
    evaluate.main([str(run)])
    out = json.loads((run / "metrics.json").read_text())
    assert out["evaluate"]["checkpoint"] == "checkpoints/last.pt" and out["evaluate"]["matches_training"]


def test_finer_resolution_keeps_the_training_figures(trained, tmp_path):
    run = fresh_copy(trained, tmp_path)
    before = json.loads((run / "metrics.json").read_text())
    evaluate.main([str(run), "evaluate.resolution=35", "--checkpoint=last.pt"])
    out = json.loads((run / "metrics.json").read_text())
    assert out["evaluate"]["eval_points"] == 35 * 35 and out["evaluate"]["resolution"] == 35
    assert out["evaluate"]["matches_training"] is False
    assert out["evaluate"]["training"]["rel_l2"] == before["rel_l2"]
    assert out["rel_l2"] != before["rel_l2"] and out["rel_l2"] == pytest.approx(before["rel_l2"], rel=0.3)
    evaluate.main([str(run), "--checkpoint=last.pt"])  # back on the training grid: equal again
    out = json.loads((run / "metrics.json").read_text())
    assert out["rel_l2"] == before["rel_l2"] and out["evaluate"]["matches_training"] is True


def test_bad_run_directories_and_options(trained, tmp_path):
    with pytest.raises(PinnError, match="does not exist"):
        evaluate.main([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PinnError, match="no checkpoints/best.pt or checkpoints/last.pt"):
        evaluate.main([str(tmp_path / "empty")])
    run = fresh_copy(trained, tmp_path)
    (run / "checkpoints/best.pt").write_bytes(b"garbage")
    with pytest.raises(PinnError, match="corrupt or unreadable"):
        evaluate.main([str(run)])
    with pytest.raises(PinnError, match="checkpoint .*nope.pt does not exist"):
        evaluate.main([str(run), "--checkpoint", "nope.pt"])
    with pytest.raises(PinnConfigError, match="evaluate.resolution=1 is invalid"):
        evaluate.main([str(run), "evaluate.resolution=1"])
    with pytest.raises(PinnConfigError, match="evaluate.points is not an option"):
        evaluate.main([str(run), "evaluate.points=10"])
    with pytest.raises(PinnError, match="no run directory given"):
        evaluate.main([])
    with pytest.raises(PinnError, match="metrics.json is a file; give a run directory"):
        evaluate.main([str(run / "metrics.json")])
    with pytest.raises(PinnError, match="is a directory, not a checkpoint file; its checkpoints are in"):
        checkpoint.load(run)


def test_cli_one_line_errors(tmp_path):
    res = pinn("hessian", str(tmp_path / "missing"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"pinn hessian: error: run directory {tmp_path / 'missing'} does not exist"]
    bad = tmp_path / "bad" / "checkpoints"
    bad.mkdir(parents=True)
    (bad / "best.pt").write_bytes(b"\x00" * 10)
    res = pinn("evaluate", str(tmp_path / "bad"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "corrupt" in res.stderr


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--help"])
    assert exit_.value.code == 0 and "evaluate.resolution" in capsys.readouterr().out


def test_an_older_best_checkpoint_is_described_as_itself(trained, tmp_path):
    """metrics.json after evaluating best.pt from step 20 describes that model: steps, loss and time
    of step 20; the training run's own figures stay under evaluate.training."""
    run = fresh_copy(trained, tmp_path)
    before = json.loads((run / "metrics.json").read_text())
    state = checkpoint.load(run / "checkpoints/last.pt")
    state.update(step=20, elapsed_s=1.25)
    checkpoint.save(state, run / "checkpoints/best.pt")
    from pinn_cli import plots

    titles = []
    real = plots.plot_solution
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "plot_solution", lambda *a, **kw: titles.append(a[6]) or real(*a, **kw))
        evaluate.main([str(run)])
    assert titles and titles[0].endswith("(pinn evaluate: the model of step 20)")  # the figure says which model
    out = json.loads((run / "metrics.json").read_text())
    with open(run / "history.csv", newline="") as fh:
        loss_at_20 = next(float(r["loss"]) for r in csv.DictReader(fh) if float(r["step"]) == 20)
    assert (out["steps"], out["wall_time_s"], out["final_loss"]) == (20, 1.25, loss_at_20)
    training = out["evaluate"]["training"]
    assert (training["steps"], training["final_loss"]) == (before["steps"], before["final_loss"])


def test_without_metrics_json_every_figure_comes_from_the_checkpoint(trained, tmp_path):
    run = fresh_copy(trained, tmp_path)
    before = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    evaluate.main([str(run), "--checkpoint", "last.pt"])
    out = json.loads((run / "metrics.json").read_text())
    for key in ("rel_l2", "max_abs_error", "rmse", "steps", "final_loss", "status", "equation", "n_params"):
        assert out[key] == before[key], key
    assert out["wall_time_s"] == round(float(checkpoint.load(run / "checkpoints" / "last.pt")["elapsed_s"]), 3)


def test_another_runs_checkpoint_is_refused_and_nothing_is_rewritten(trained, tmp_path):
    run = fresh_copy(trained, tmp_path)
    other = tmp_path / "other"
    run_training(make_cfg("equation=poisson2d", *FAST, "seed=5"), other)
    before = (run / "metrics.json").read_text()
    with pytest.raises(PinnError, match="is from another run \\(seed differs"):
        evaluate.main([str(run), "--checkpoint", str(other / "checkpoints" / "last.pt")])
    assert (run / "metrics.json").read_text() == before
    copy = tmp_path / "copy.pt"
    shutil.copy(run / "checkpoints" / "last.pt", copy)  # a copy of this run's own checkpoint is fine
    evaluate.main([str(run), "--checkpoint", str(copy)])
    assert json.loads((run / "metrics.json").read_text())["evaluate"]["matches_training"] is True


def test_a_resolution_beyond_memory_is_a_one_line_error(trained, tmp_path):
    run = fresh_copy(trained, tmp_path)
    with pytest.raises(PinnConfigError, match=r"evaluate.resolution=3000 asks for 3000\^2 = 9e\+06 points"):
        evaluate.main([str(run), "evaluate.resolution=3000"])
