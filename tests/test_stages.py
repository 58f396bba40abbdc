"""Tuned, raced comparisons (sweep/stages.py): every variant tuned on the same budget, then
judged on fresh seeds handed out by the race; bad settings refused before any training; a
comparison killed in each stage resumes to a complete, consistent record."""

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from mlp_experiments.errors import UserError
from mlp_experiments.report.racing import RaceSettings
from mlp_experiments.stores import sqlite_lock
from mlp_experiments.sweep import space, spec, stages
from mlp_experiments.sweep.command import run_sweep

TUNED = """\
study_name: tuned
overrides: [data=synthetic, trainer.epochs=2, trainer.device=cpu, tracking.log_model=false]
variants:
  sgd: [optimizer=sgd]
  adam: [optimizer=adam]
tune:
  space:
    optimizer.lr: tag(log, interval(1e-3, 0.5))
  n_trials: 3
  seed: 7
race:
  min_seeds: 2
  max_seeds: 3
"""


def sweep_file(folder: Path, text: str = TUNED) -> Path:
    path = folder / "tuned.yaml"
    path.write_text(text)
    return path


EDITS = {  # of TUNED, for what a command-line override cannot say (it merges into a mapping)
    "no tune space": ("    optimizer.lr: tag(log, interval(1e-3, 0.5))\n", "    {}\n"),
    "no variants": ("  sgd: [optimizer=sgd]\n  adam: [optimizer=adam]\n",
                    "  {}\nspace:\n  model.activation: choice(relu, tanh)\n"),
}


@pytest.mark.parametrize(("argument", "message"), [
    ("no tune space", "sweep.tune.space is empty"),
    ("no variants", "compare named variants"),
    ("sweep.race.margin=-0.01", "margin must be 0 or more"),
    ("sweep.race.max_seeds=1", "max_seeds (1) must be at least min_seeds (2)"),
    ("sweep.race.patience=3", "patience is not a race setting"),
    ("sweep.tune.n_trials=0", "sweep.tune.n_trials=0 must be at least 1"),
    ("sweep.tune.sampler=grid", "sweep.tune.sampler=grid: choose tpe, random or qmc"),
    ("sweep.variants.adam=['optimizer=adam','optimizer.lr=0.01']",
     "sweep.tune.space.optimizer.lr is tuned, but adam also set(s) it"),
    ("optimizer.lr=0.01", "is tuned, but the command line also set(s) it"),
    ("sweep.space={trainer.seed: 'range(0, 3)'}", "the race hands out the seeds"),
    ("sweep.tune.space={trainer.seed: 'range(0, 3)'}", "tuning runs on tune.seed alone"),
    ("sweep.tune.variant_space={lasso: {optimizer.momentum: 'interval(0, 0.9)'}}",
     "sweep.tune.variant_space: lasso is not a variant (variants: sgd, adam)"),
    ("sweep.tune.variant_space={adam: {optimizer.lr: 'interval(1e-3, 1)'}}",
     "sweep.tune.variant_space.adam: optimizer.lr is in tune.space already"),
    ("sweep.tune.variant_space={adam: {trainer.seed: 'range(0, 3)'}}",
     "sweep.tune.variant_space.adam.trainer.seed: tuning runs on tune.seed alone"),
    (("sweep.tune.variant_space={sgd: {optimizer.momentum: 'interval(0, 0.9)'}}",
      "sweep.variants.sgd=['optimizer=sgd','optimizer.momentum=0.5']"),
     "sweep.tune.variant_space.sgd.optimizer.momentum is tuned, but sgd also set(s) it"),
    (("sweep.tune.variant_space={sgd: {optimizer.momentum: 'interval(0, 0.9)'}}",
      "optimizer.momentum=0.5"), "is tuned, but the command line also set(s) it"),
])
def test_bad_stage_settings_are_refused_before_any_training(tmp_path, monkeypatch, argument,
                                                             message):
    monkeypatch.chdir(tmp_path)
    text, overrides = TUNED, list(argument) if isinstance(argument, tuple) else [argument]
    if argument in EDITS:
        text, overrides = TUNED.replace(*EDITS[argument]), []
    path = sweep_file(tmp_path, text)
    with pytest.raises(UserError) as error:
        run_sweep([f"sweep={path}", "tracking=none", *overrides])
    assert message in str(error.value)
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "checkpoints").exists()


def test_evaluation_seeds_come_after_the_tuning_seed():
    sweep = spec.load_sweep("compare_optimizers", [])
    sweep.race = {"min_seeds": 3, "max_seeds": 6}
    assert stages.evaluation_seeds(sweep) == [0, 1, 2, 3, 4, 5]  # untuned: seeds 0, 1, ...
    sweep.tune = spec.TuneConfig(space={"optimizer.lr": "tag(log, interval(1e-4, 1))"},
                                 n_trials=4, seed=11)
    seeds = stages.evaluation_seeds(sweep)
    assert seeds == list(range(12, 18)) and sweep.tune.seed not in seeds


def test_a_variant_tunes_the_shared_space_and_its_own():
    sweep = spec.load_sweep("compare_regularization_tuned", [])
    spaces = {name: stages.tuning_sweep(sweep, name).space for name in sweep.variants}
    assert set(spaces["none"]) == {"optimizer.lr"}
    assert set(spaces["dropout"]) == {"optimizer.lr", "model.dropout"}
    assert set(spaces["weight_decay"]) == {"optimizer.lr", "regularization.weight_decay"}
    plan = "\n".join(stages.plan_lines(sweep))
    assert "    model.dropout: interval(0.05, 0.8) (only dropout)" in plan


def test_a_tuned_key_is_set_by_the_tuning_not_by_choosing_a_group():
    assert not spec.sets("optimizer=adam", "optimizer.lr")  # a group option: fine
    assert spec.sets("optimizer.lr=0.1", "optimizer.lr")
    assert spec.sets("+optimizer.lr=0.1", "optimizer.lr")
    assert not spec.sets("loss.reduction=sum", "loss")  # a value under a searched group
    assert spec.sets("model.hidden_sizes.0=64", "model.hidden_sizes")  # a value under a key
    assert not spec.sets("optimizer.momentum=0.9", "optimizer.lr")


def test_the_race_settings_default_to_the_racing_modules():
    sweep = spec.load_sweep("compare_optimizers", ["race={}"])
    assert stages.race_settings(sweep) == RaceSettings()


# ---------------------------------------------------------------------------- end to end

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def sweep_command(folder: Path) -> list[str]:
    return [sys.executable, "-m", "mlp_experiments.sweep", f"sweep={sweep_file(folder)}",
            f"sweep.storage=sqlite:///{folder / 'optuna.db'}", "sweep.n_workers=2",
            "sweep.tune.n_trials=2", "sweep.race.max_seeds=2",
            f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            f"trainer.checkpoint_dir={folder / 'checkpoints'}"]


def complete_trials(folder: Path, study_name: str) -> int:
    url = f"sqlite:///{folder / 'optuna.db'}"
    try:
        with sqlite_lock(url):
            study = optuna.load_study(study_name=study_name, storage=url)
            return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    except KeyError:  # not created yet
        return 0


def kill_when(command: list[str], folder: Path, study_name: str, trials: int) -> None:
    """Start the comparison and SIGKILL it and its workers once `study_name` has `trials`
    complete trials; waits as long as the command makes progress."""
    with open(folder / "killed.log", "a") as log:
        process = subprocess.Popen(command, cwd=folder, env=ENV, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while complete_trials(folder, study_name) < trials:
                assert process.poll() is None, (folder / "killed.log").read_text()
                time.sleep(0.5)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.faults
def test_a_tuned_comparison_killed_in_each_stage_resumes_to_a_complete_record(tmp_path):
    command = sweep_command(tmp_path)
    kill_when(command, tmp_path, "tuned.tune.sgd", 1)  # in the tuning stage
    kill_when(command, tmp_path, "tuned", 1)  # in the race
    result = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "race after" in result.stdout

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep = spec.load_sweep(str(sweep_file(tmp_path)), [f"storage={json_string(url)}",
                                                        "tune.n_trials=2", "race.max_seeds=2"])
    for variant, study in stages.tuning_studies(sweep).items():
        # A killed trial (FAIL, even where it noted its outcome first) was run again.
        ended = [t for t in study.trials if t.state != TrialState.FAIL or
                 t.user_attrs.get("outcome") in ("diverged", "error")]
        assert len(ended) == 2, variant  # the same budget for every variant
        assert {t.params.get("trainer.seed") for t in ended} == {None}  # the seed is fixed
        assert all("trainer.seed=7" in t.user_attrs["overrides"] for t in ended)
    study = optuna.load_study(study_name="tuned", storage=url)
    judged = [(t.params["variant"], t.params["trainer.seed"])
              for t in study.get_trials(states=(TrialState.COMPLETE,))]
    assert len(judged) == len(set(judged))  # every run of the race once
    assert {seed for _, seed in judged} == {8, 9}  # after the tuning seed 7, never on it
    state = stages.race_state(sweep, study)
    assert state.finished

    # Every evaluation run ran at its variant's tuned learning rate.
    chosen = {v: stages.best_values(s, v) for v, s in stages.tuning_studies(sweep).items()}
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        assert chosen[trial.params["variant"]][0] in trial.user_attrs["overrides"]

    # MLflow: study -> stage -> variant -> runs, nothing left RUNNING.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mlp-experiments").experiment_id])
    by_id = {run.info.run_id: run for run in runs}
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]

    def path_of(run) -> list[str]:
        names = []
        while run is not None:
            names.insert(0, run.info.run_name)
            run = by_id.get(run.data.tags.get("mlflow.parentRunId"))
        return names

    paths = {tuple(path_of(r)) for r in runs if r.info.status == "FINISHED"}
    assert ("study-tuned", "evaluate", "evaluate-adam", "adam-seed8") in paths
    assert any(p[:3] == ("study-tuned", "tune", "tune-sgd") and len(p) == 4 for p in paths), \
        sorted((path_of(r), r.info.status) for r in runs)

    # The report says what the race decided.
    report = subprocess.run([sys.executable, "-m", "mlp_experiments.report",
                             f"sweep={sweep_file(tmp_path)}", f"sweep.storage={url}",
                             "tracking=none", f"report.out_dir={tmp_path / 'reports'}"],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "reports" / "tuned" / "report.md").read_text()
    sgd_lr = stages.tuning_studies(sweep)["sgd"].best_trial.params["optimizer.lr"]
    assert "## Tuning" in text and f"`optimizer.lr={sgd_lr:.4g}`" in text
    assert f"`{state.leader}` leads" in text
    (other,) = [name for name in state.verdicts if name != state.leader]
    expected = {"beaten": f"`{state.leader}` beats `{other}`",
                "same": f"`{state.leader}` and `{other}` are practically the same",
                "racing": f"`{state.leader}` against `{other}` is undecided"}
    assert expected[state.verdicts[other].status] in text
    # Its cost: the 4 tuning trials that ended on their own (a killed one's retry among them) and
    # the race's runs, each with the CPU time it recorded.
    tuning = re.search(r"^- tuning: 4 trials, (\d+) epochs, ([\d.]+) CPU-minutes$", text, re.M)
    evaluation = re.search(rf"^- evaluation: {len(judged)} trials, (\d+) epochs, ([\d.]+) "
                           rf"CPU-minutes$", text, re.M)
    assert tuning and evaluation, text
    assert int(evaluation[1]) == 2 * len(judged) and float(evaluation[2]) > 0  # 2 epochs each
    assert "  cost: " in result.stdout


def json_string(value: str) -> str:
    import json

    return json.dumps(value)


def test_quasi_random_tuning_draws_one_sequence_across_workers():
    """Two workers (opened with different seeds) share one Sobol sequence: no point twice, and
    the points one worker alone would draw."""
    sweep = spec.load_sweep("compare_optimizers_tuned", [])
    stage = stages.tuning_sweep(sweep, "sgd")
    distributions = space.parse_space(stage.space)

    def draws(worker_seeds: list[int]) -> list[float]:
        study = optuna.create_study(direction="maximize")
        samplers = [spec.make_sampler(stage, distributions, seed) for seed in worker_seeds]
        values = []
        for index in range(6):
            study.sampler = samplers[index % len(samplers)]
            trial = study.ask(distributions)
            values.append(trial.params["optimizer.lr"])
            study.tell(trial, 0.5)
        return values

    shared = draws([0, 1000])
    assert shared == draws([0]) and len(set(shared)) == 6
    exponents = sorted(math.log10(v) for v in shared)  # spread over the log range 1e-4..1
    assert exponents[0] == pytest.approx(-4) and max(np.diff(exponents)) <= 1.0 + 1e-9
