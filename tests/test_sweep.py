"""Tiny synthetic sweeps through the real sweep command, storages and MLflow."""

import os
import signal
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import worker_of
from mlflow import MlflowClient
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from mlp_experiments.config.compose import CONF_DIR, check_overrides, compose_config
from mlp_experiments.config.identity import config_hash
from mlp_experiments.errors import UserError
from mlp_experiments.stores import sqlite_lock
from mlp_experiments.sweep import slurm, space, spec, worker
from mlp_experiments.sweep import study as studies
from mlp_experiments.sweep.command import BEST_TRIALS_PLOTTED, run_sweep
from mlp_experiments.sweep.study import mlflow_run_of

FAST = ["data=synthetic", "trainer.epochs=2", "trainer.device=cpu", "tracking.log_model=false"]


@pytest.fixture
def sweep_file(tmp_path, monkeypatch, workdir, tracking_uri, request):
    """Write sweeps/<name>.yaml into a temporary sweeps folder; return the command's arguments
    (the study stored in a temporary SQLite file, the runs in the session's MLflow store). The
    working directory is the temporary folder: a search's best preset goes there."""
    folder = tmp_path / "sweeps"
    folder.mkdir()
    monkeypatch.setattr(spec, "SWEEPS_DIR", folder)

    def write(text: str, *extra: str) -> list[str]:
        (folder / "tiny.yaml").write_text(text)
        return ["sweep=tiny", f"sweep.storage=sqlite:///{tmp_path / 'optuna.db'}", *FAST,
                f"tracking.uri={tracking_uri}", f"tracking.experiment='{request.node.name}'",
                f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}", *extra]

    return write


def child_runs(tracking_uri, experiment_name, parent_run_id):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    return client.search_runs([experiment.experiment_id],
                              f"tags.mlflow.parentRunId = '{parent_run_id}'")


# ---------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("interval(0.0, 0.5)", FloatDistribution(0.0, 0.5)),
        ("tag(log, interval(0.001, 1.0))", FloatDistribution(0.001, 1.0, log=True)),
        ("interval(1, 8)", FloatDistribution(1.0, 8.0)),  # Hydra's intervals are floats...
        ("int(interval(1, 8))", IntDistribution(1, 8)),  # ...unless cast, as in its sweeper
        ("tag(log, int(interval(1, 1024)))", IntDistribution(1, 1024, log=True)),
        ("choice(sgd, adam)", CategoricalDistribution(["sgd", "adam"])),
        ("choice([256], [512,256])", CategoricalDistribution(["[256]", "[512,256]"])),
        ("range(0, 3)", IntDistribution(0, 2)),
        ("range(0, 10, 5)", IntDistribution(0, 5, step=5)),
        ("range(1, 10, 4)", IntDistribution(1, 9, step=4)),
        ("range(0.5, 2.0, 0.5)", CategoricalDistribution([0.5, 1.0, 1.5])),
    ],
)
def test_hydra_sweep_grammar_maps_to_optuna_distributions(expression, expected):
    assert space.parse_space({"key": expression}) == {"key": expected}


@pytest.mark.parametrize("expression", ["0.1", "glob(*)", "interval(0.1"])
def test_expressions_we_cannot_map_fail_clearly(expression):
    with pytest.raises(UserError, match="space.key"):
        space.parse_space({"key": expression})


def test_a_typo_in_the_space_fails_before_any_trial():
    sweep = spec.load_sweep("search_mlp", ["space={optimizer.lrr: 'interval(0.1, 1.0)'}"])
    with pytest.raises(UserError, match="space.optimizer.lrr is not a key"):
        spec.check_space(sweep, [], space.parse_space(sweep.space))


def test_a_learning_rate_on_a_linear_scale_is_refused():
    sweep = spec.load_sweep("search_mlp", ["space={optimizer.lr: 'interval(0.001, 1.0)'}"])
    with pytest.raises(UserError, match="log scale"):
        spec.check_space(sweep, [], space.parse_space(sweep.space))


def test_sweep_seeds_sets_how_many_seeds_a_comparison_runs():
    sweep = spec.load_sweep("compare_optimizers", ["seeds=2"])
    distributions = space.parse_space(sweep.space)
    assert distributions[spec.SEED_KEY] == IntDistribution(0, 1)
    assert spec.budget(sweep, distributions) == 6 * 2  # six variants, two seeds each


@pytest.mark.parametrize(("sweep_name", "setting", "message"), [
    ("compare_optimizers", "seeds=0", "sweep.seeds=0 must be at least 1"),
    ("search_mlp", "seeds=3", "a search draws its trials: set sweep.n_trials"),
    ("compare_optimizers_tuned", "seeds=3", "set sweep.race.max_seeds instead"),
])
def test_sweep_seeds_where_it_means_nothing_is_refused(sweep_name, setting, message):
    with pytest.raises(UserError, match=message):
        spec.load_sweep(sweep_name, [setting])


@pytest.mark.parametrize(("sweep_name", "override", "message"), [
    ("compare_optimizers", "trainer.seed=0", "trainer.seed=0: the sweep searches trainer.seed "
     "(space.trainer.seed: range(0, 5)), so each trial sets it. Drop the override, or set how "
     "many seeds with sweep.seeds=N."),
    ("search_mlp", "optimizer.lr=0.1", "optimizer.lr=0.1: the sweep searches optimizer.lr"),
])
def test_a_training_override_of_a_searched_key_is_refused(sweep_name, override, message):
    sweep = spec.load_sweep(sweep_name, [])
    with pytest.raises(UserError) as error:
        spec.check_space(sweep, [override], space.parse_space(sweep.space))
    assert message in str(error.value)


def test_a_value_under_a_searched_group_is_no_clash():
    sweep = spec.load_sweep("compare_losses", ["seeds=1"])
    spec.check_space(sweep, ["loss.reduction=sum"], space.parse_space(sweep.space))


def test_every_shipped_sweep_plans_cleanly():
    from mlp_experiments.sweep import stages
    from mlp_experiments.sweep.command import check_staged

    for path in sorted(spec.SWEEPS_DIR.glob("*.yaml")):
        sweep = spec.load_sweep(path.stem, [])
        if stages.is_staged(sweep):  # tuned and raced: each stage's trials are checked
            check_staged(sweep, [])
            continue
        distributions = space.parse_space(sweep.space)
        spec.check_space(sweep, [], distributions)
        assert spec.budget(sweep, distributions) >= (9 if sweep.sampler == "grid" else 30)


@pytest.mark.parametrize(("overrides", "message"), [
    (["launcher=pbs"], "sweep.launcher=pbs: choose local or slurm"),
    (["slurm={mem_gb: 4}"], "sweep.slurm sets the Slurm jobs of sweep.launcher=slurm"),
])
def test_the_launcher_is_checked_when_the_sweep_loads(overrides, message):
    with pytest.raises(UserError, match=message):
        spec.load_sweep("search_mlp", overrides)


@pytest.mark.parametrize(("setting", "message"), [
    ("{mem_gbb: 4}", "sweep.slurm: Key 'mem_gbb' not in 'SlurmQueueConf'.*keys: .*mem_gb"),
    ("{mem_gb: lots}", "sweep.slurm: Value 'lots' of type 'str' could not be converted"),
    ("{setup: [touch /tmp/x]}", "submitit runs these shell commands"),
])
def test_a_slurm_setting_sbatch_could_not_take_is_named(setting, message):
    sweep = spec.load_sweep("search_mlp", ["launcher=slurm", f"slurm={setting}"])
    with pytest.raises(UserError, match=message):
        slurm.job_settings(sweep)


def test_the_workers_request_the_launcher_configs_resources_as_submitit_takes_them():
    sweep = spec.load_sweep("search_mlp", ["launcher=slurm",
                                           "slurm={partition: gpu, gpus_per_node: 1}"])
    settings = slurm.job_settings(sweep)
    launcher = compose_config(["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
    assert settings["mem_gb"] == launcher.mem_gb and settings["partition"] == "gpu"
    assert "submitit_folder" not in settings  # Hydra's multirun folder, not the sweep's
    parameters = slurm.executor_parameters(settings)
    assert parameters["slurm_partition"] == "gpu" and parameters["gpus_per_node"] == 1
    assert parameters["timeout_min"] == launcher.timeout_min
    assert "slurm_qos" not in parameters  # unset: the cluster's default


def stand_in(folder: Path, name: str, output: str) -> None:
    """A Slurm client on PATH that prints `output` and records its arguments."""
    script = folder / name
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {folder / name}.calls\n"
                      f"cat <<'EOF'\n{output}EOF\n")
    script.chmod(0o755)


SINFO = "debug* 2 7800 1:00:00\nbig 64 512000 infinite\n"  # two partitions, debug the default


@pytest.mark.parametrize(("settings", "fixes"), [
    ("{cpus_per_task: 4, mem_gb: 16}",
     "Set sweep.slurm.cpus_per_task=2 sweep.slurm.mem_gb=7, or"),
    ("{cpus_per_task: 1, mem_gb: 1, timeout_min: 90}", "Set sweep.slurm.timeout_min=60, or"),
])
def test_workers_that_no_node_of_the_partition_fits_are_refused_before_sbatch(
        tmp_path, monkeypatch, settings, fixes):
    stand_in(tmp_path, "sinfo", SINFO)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    sweep = spec.load_sweep("search_mlp", ["launcher=slurm", f"slurm={settings}"])
    with pytest.raises(UserError) as error:
        slurm.job_settings(sweep)
    assert "would keep these jobs PENDING for ever (PartitionConfig)" in str(error.value)
    assert "partition debug's largest node has 2 CPUs and 7800 MB" in str(error.value)
    assert fixes in str(error.value)
    fits = spec.load_sweep("search_mlp", ["launcher=slurm", "slurm={partition: big}"])
    assert slurm.job_settings(fits)["partition"] == "big"  # 4 CPUs, 16 GB: a big node has them


def test_a_multirun_that_no_node_fits_is_refused_before_sbatch(tmp_path, monkeypatch):
    stand_in(tmp_path, "sinfo", SINFO)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(UserError, match="Set hydra.launcher.cpus_per_task=2 "
                                        "hydra.launcher.mem_gb=7"):
        check_overrides(["hydra/launcher=slurm"])


def test_following_stops_and_cancels_an_array_that_can_never_start(tmp_path, monkeypatch):
    stand_in(tmp_path, "squeue", "77_0 PENDING PartitionConfig\n77_1 PENDING PartitionConfig\n")
    stand_in(tmp_path, "scancel", "")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    jobs = [SimpleNamespace(job_id="77_0"), SimpleNamespace(job_id="77_1")]
    with pytest.raises(UserError, match="Slurm array 77 can never start: its tasks are PENDING "
                                        "with reason PartitionConfig"):
        slurm.follow(optuna.create_study(), jobs, n_trials=4)
    assert (tmp_path / "scancel.calls").read_text() == "77\n"


def test_following_shows_why_tasks_wait(tmp_path, monkeypatch, capsys):
    stand_in(tmp_path, "squeue", "78_0 RUNNING None\n78_1 PENDING Resources\n")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setattr(slurm, "FOLLOW_S", 0)
    monkeypatch.setattr(slurm, "closed_trials", lambda study: [None] * (study.calls.pop()))
    study = SimpleNamespace(calls=[1, 0])  # one trial ended at the second look
    assert slurm.follow(study, [SimpleNamespace(job_id="78_0")], n_trials=1) == 0
    assert ("trials: 0/1 ended | Slurm array 78: 1 PENDING (Resources), 1 RUNNING"
            in capsys.readouterr().out)


def test_following_waits_for_a_noted_trial_until_optuna_closes_it(monkeypatch, capsys):
    """A worker cancelled between noting a trial's outcome and telling Optuna leaves it RUNNING
    until its heartbeat fails it and a retry runs. Following ended at the note: the command
    summarised the study, and the retry ran after it (seen in a fresh-clone CI)."""
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("outcome", "completed")
    looks = []

    def queue_states(array):
        looks.append(array)
        if len(looks) == 2:  # its worker tells Optuna now
            study.tell(trial, 0.5)
        return {"78_0": "RUNNING"}

    monkeypatch.setattr(slurm, "queue_states", queue_states)
    monkeypatch.setattr(slurm, "FOLLOW_S", 0)
    assert slurm.follow(study, [SimpleNamespace(job_id="78_0")], n_trials=1) == 0
    assert len(looks) == 3
    output = capsys.readouterr().out
    assert "trials: 0/1 ended | Slurm array 78: 1 RUNNING" in output
    assert "trials: 1/1 ended" in output


# ---------------------------------------------------------------------------- running sweeps

GRID = """
study_name: tiny_grid
variants:
  sgd: [optimizer=sgd, optimizer.lr=0.1]
  adam: [optimizer=adam]
space:
  trainer.seed: range(0, 2)
sampler: grid
pruner: none
"""


def test_grid_comparison_runs_every_cell_as_a_child_of_one_parent_run(sweep_file, tracking_uri,
                                                                       request, workdir, capsys):
    study = run_sweep(sweep_file(GRID))
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert (f"drawing the best trials' figures and the study's report into MLflow (run "
            f"{parent})...") in capsys.readouterr().out
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    cells = {(t.params["variant"], t.params["trainer.seed"]) for t in trials}
    assert cells == {("sgd", 0), ("sgd", 1), ("adam", 0), ("adam", 1)} and len(trials) == 4
    children = child_runs(tracking_uri, request.node.name, parent)
    assert len(children) == 4
    child = children[0]
    assert child.data.tags["outcome"] == "completed"
    assert set(child.data.metrics) >= {"val_acc", "test_acc", "train_loss"}
    client = MlflowClient(tracking_uri)
    parent_run = client.get_run(parent)
    assert parent_run.data.params["sampler"] == "grid"
    assert parent_run.data.params["variant.adam"] == "optimizer=adam"
    # a comparison's best trial is one seed of one variant: no preset
    assert "best_config.yaml" not in {a.path for a in client.list_artifacts(parent)}
    assert not (workdir / "outputs").exists()
    # the trials draw no figures; the best trial of each variant gets them after the study
    plotted = {c.info.run_id for c in children if client.list_artifacts(c.info.run_id, "plots")}
    best = {variant: mlflow_run_of(max((t for t in trials if t.params["variant"] == variant),
                                       key=lambda t: t.value))
            for variant in ("sgd", "adam")}
    assert plotted == set(best.values())
    # running the same command again finds the study complete: no new trial, no new run
    again = run_sweep(sweep_file(GRID))
    assert len(again.trials) == 4
    assert len(child_runs(tracking_uri, request.node.name, parent)) == 4


def test_pruned_and_diverged_trials_are_recorded_and_the_sweep_goes_on(sweep_file, tracking_uri,
                                                                       request):
    text = """
study_name: tiny_prune
space:
  optimizer.lr: choice(0.1, 0.000001, 1e30)
sampler: grid
pruner: threshold
pruner_args: {lower: 0.3}
"""
    study = run_sweep(sweep_file(text))
    by_lr = {t.params["optimizer.lr"]: t for t in study.trials}
    assert by_lr[0.1].state == TrialState.COMPLETE and by_lr[0.1].value > 0.3
    assert by_lr[0.000001].state == TrialState.PRUNED
    assert by_lr[0.000001].user_attrs["outcome"] == "pruned"
    assert len(by_lr[0.000001].user_attrs["history"]) == 1  # stopped after its first epoch
    assert by_lr[1e30].state == TrialState.FAIL
    assert by_lr[1e30].user_attrs["outcome"] == "diverged"
    runs = child_runs(tracking_uri, request.node.name, study.user_attrs["mlflow_parent_run_id"])
    assert sorted(r.data.tags["outcome"] for r in runs) == ["completed", "diverged", "pruned"]


SEARCH = """
study_name: tiny_search
space:
  optimizer.lr: tag(log, interval(0.01, 0.5))
  model.dropout: interval(0.0, 0.3)
sampler: tpe
pruner: median
n_trials: 2
"""


def test_resume_adds_trials_without_repeating_finished_ones(sweep_file):
    first = run_sweep(sweep_file(SEARCH))
    assert len(first.trials) == 2
    before = {t.number: t.params for t in first.trials}
    resumed = run_sweep(sweep_file(SEARCH, "sweep.n_trials=4"))
    assert [t.state for t in resumed.trials] == [TrialState.COMPLETE] * 4
    assert {t.number: t.params for t in resumed.trials[:2]} == before
    hashes = [t.user_attrs["config_hash"] for t in resumed.trials]
    assert len(set(hashes)) == 4


def test_an_exact_configuration_already_finished_is_not_trained_again(sweep_file, tracking_uri,
                                                                      request):
    text = """
study_name: tiny_same
space:
  optimizer.lr: choice(0.1)
sampler: random
pruner: none
n_trials: 3
"""
    study = run_sweep(sweep_file(text))
    first, *rest = study.trials
    assert "reused_from" not in first.user_attrs
    assert [t.user_attrs["reused_from"] for t in rest] == [0, 0]
    assert [t.value for t in rest] == [first.value] * 2
    runs = child_runs(tracking_uri, request.node.name, study.user_attrs["mlflow_parent_run_id"])
    assert len(runs) == 1


def test_a_retried_trial_whose_configuration_had_ended_takes_its_run_and_leaves_no_empty_one(
        sweep_file, tracking_uri, tmp_path, request):
    # What a worker killed after its run ended, before Optuna heard, leaves its retry: a
    # checkpoint that says the configuration ended (here trained by another study).
    text = """
study_name: {name}
space:
  optimizer.lr: choice(0.1)
sampler: random
pruner: none
n_trials: 1
"""
    (first,) = run_sweep(sweep_file(text.format(name="tiny_first"))).trials
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    retrying = optuna.create_study(study_name="tiny_retry", storage=storage,
                                   direction="maximize")
    retrying.enqueue_trial({"optimizer.lr": 0.1}, user_attrs={"resumes": 0})
    study = run_sweep(sweep_file(text.format(name="tiny_retry")))
    (retry,) = study.trials
    assert retry.state == TrialState.COMPLETE and retry.value == first.value
    assert mlflow_run_of(retry) == mlflow_run_of(first)
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert child_runs(tracking_uri, request.node.name, parent) == []  # its empty run deleted


def test_a_lost_worker_closes_its_running_run_and_leaves_a_finished_one_true(
        tmp_path, tracking_uri, request, monkeypatch):
    """Optuna's heartbeat check through our callback (LostTrial): a worker killed mid-trial
    leaves its run RUNNING (its journal unended, nobody writing it), to be closed FAILED as
    lost; one killed after its run ended, before Optuna heard, leaves a FINISHED run that must
    stay FINISHED. Both trials are queued again."""
    import time

    from mlp_experiments import tracking
    from mlp_experiments.sender import Shipment

    monkeypatch.setattr(studies, "STALE_AFTER_S", 1)
    folders = {kind: tmp_path / "checkpoints" / "0123456789abcdef" / "runs" / kind
               for kind in ("finished", "running")}
    for kind, folder in folders.items():
        journal = tracking.Journal(folder)
        journal.append("start", uri=tracking_uri, experiment=request.node.name, tags={})
        journal.append("epoch", step=1, metrics={"train_loss": 1.0})
        if kind == "finished":
            journal.append("end", outcome="completed")
            journal.close()
        assert Shipment(folder).ship() == (kind == "finished")  # its worker's sender sent it
        journal.close()  # the worker is killed
    run_ids = {kind: tracking.read_mark(folder)["run_id"] for kind, folder in folders.items()}
    client = MlflowClient(tracking_uri)
    assert client.get_run(run_ids["running"]).info.status == "RUNNING"
    storage = studies.make_storage(f"sqlite:///{tmp_path / 'optuna.db'}", tracking_uri)
    study = optuna.create_study(study_name="lost", storage=storage)
    for kind, folder in folders.items():
        trial = study.ask()
        trial.set_user_attr("journal", str(folder))
        if kind == "finished":  # as a worker does between the run's end and Optuna's tell
            trial.set_user_attr("outcome", "completed")
        storage.record_heartbeat(trial._trial_id)
    # The workers are silent: once their heartbeats are stale, the next look fails their trials.
    deadline = time.monotonic() + 600
    while study.get_trials(states=(TrialState.RUNNING,)):
        assert time.monotonic() < deadline, "the heartbeats never went stale"
        studies.more_to_run(study, n_trials=2)
        time.sleep(0.2)
    assert tracking.Sender.wait(list(folders.values())) == []  # this process's sender closed it
    finished = client.get_run(run_ids["finished"])
    assert finished.info.status == "FINISHED" and finished.data.tags["outcome"] == "completed"
    lost = client.get_run(run_ids["running"])
    assert lost.info.status == "FAILED" and lost.data.tags["outcome"] == "lost"
    retries = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["resumes"] for t in retries) == [0, 1]
    assert studies.counted_trials(study) == 2  # the retries, not the trials they replace


def test_a_resumed_sweep_sends_what_a_killed_command_left_unsent(tmp_path, tracking_uri,
                                                                 request):
    """A command SIGKILLed (its sender with it) after a trial ended, before the trial's records
    reached MLflow: the next command of the study sends them; a journal a live process still
    writes is left to it."""
    from mlp_experiments import tracking

    folders = {kind: tmp_path / "checkpoints" / "0123456789abcdef" / "runs" / kind
               for kind in ("ended", "writing")}
    journals = {}
    for kind, folder in folders.items():
        journals[kind] = tracking.Journal(folder)
        journals[kind].append("start", uri=tracking_uri, experiment=request.node.name, tags={})
        journals[kind].append("epoch", step=1, metrics={"train_loss": 1.0})
    journals["ended"].append("end", outcome="completed")
    journals["ended"].close()
    study = optuna.create_study(study_name="left", storage=f"sqlite:///{tmp_path / 'o.db'}")
    for folder in folders.values():
        trial = study.ask()
        trial.set_user_attr("journal", str(folder))
        study.tell(trial, 1.0)
    studies.follow_left_over([study])
    assert tracking.Sender.wait([folders["ended"]]) == []
    run = MlflowClient(tracking_uri).get_run(tracking.read_mark(folders["ended"])["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["train_loss"] == 1.0
    assert folders["writing"] not in tracking.Sender.followed
    journals["writing"].close()


def test_two_worker_processes_finish_exactly_n_trials(sweep_file):
    study = run_sweep(sweep_file(SEARCH, "sweep.n_trials=6", "sweep.n_workers=2",
                                        "sweep.sampler=random", "sweep.pruner=none"))
    assert len(study.trials) == 6
    assert [(t.state, t.user_attrs.get("outcome")) for t in study.trials] == [
        (TrialState.COMPLETE, "completed")] * 6
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert len({t.user_attrs["config_hash"] for t in study.trials}) == 6


def test_worker_processes_serve_every_stage_and_one_lost_between_stages_is_replaced(
        sweep_file, tmp_path):
    """A staged comparison's stages go to the same worker processes (each start costs seconds
    of imports); a worker killed while it waits for the next stage is replaced there."""
    sweep_file(SEARCH)
    first = spec.load_sweep("tiny", [f"storage=sqlite:///{tmp_path / 'optuna.db'}",
                                     "n_workers=2", "sampler=random", "pruner=none"])
    second = OmegaConf.merge(first, {"study_name": "tiny_second"})
    training = [*FAST, "tracking=none", f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}"]
    with worker.LocalWorkers(training, None, None) as workers:
        assert workers.run(first, None) == 0
        before = {index: process for index, (process, _) in workers.processes.items()}
        os.kill(before[0].pid, signal.SIGKILL)
        before[0].join()
        assert workers.run(second, None) == 0
        after = {index: process for index, (process, _) in workers.processes.items()}
    assert after[1] is before[1] and after[0].pid != before[0].pid
    assert [process.exitcode for process in after.values()] == [0, 0]  # let go at the end
    for sweep, pool in ((first, before), (second, after)):
        study = optuna.load_study(study_name=sweep.study_name, storage=sweep.storage)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
        pids = {worker_of(t).pid for t in study.trials}
        assert pids <= {process.pid for process in pool.values()}


def test_two_worker_processes_run_every_cell_of_a_grid_once(sweep_file):
    study = run_sweep(sweep_file(GRID, "sweep.n_workers=2", "sweep.space={trainer.seed: "
                                       "'range(0, 4)'}"))
    cells = sorted((t.params["variant"], t.params["trainer.seed"]) for t in study.trials)
    assert cells == [(variant, seed) for variant in ("adam", "sgd") for seed in range(4)]
    assert all(t.user_attrs["outcome"] == "completed" for t in study.trials)


def test_the_best_trial_is_written_under_the_working_directory_as_a_preset_that_reproduces_it(
    sweep_file, workdir, tracking_uri, capsys
):
    """Named like the study of the shipped `search_mlp_best` preset (the README's documented
    result): the search leaves that one as it is and writes its own under ./outputs/presets."""
    shipped = CONF_DIR / "experiment" / "search_mlp_best.yaml"
    shipped_before = shipped.read_bytes()
    study = run_sweep(sweep_file(SEARCH.replace("tiny_search", "search_mlp")))
    assert shipped.read_bytes() == shipped_before
    path = workdir / "outputs" / "presets" / "experiment" / "best" / "search_mlp.yaml"
    assert path.read_text().startswith("# @package _global_")
    command = "uv run mlp-train -cd outputs/presets experiment=best/search_mlp"
    assert f"train it: {command}" in capsys.readouterr().out
    assert command in path.read_text()
    logged = MlflowClient(tracking_uri).download_artifacts(
        study.user_attrs["mlflow_parent_run_id"], "best_config.yaml", str(workdir))
    assert Path(logged).read_text() == path.read_text()

    # Hydra searches a -cd folder after conf/: nothing there may shadow the sweeps' presets
    assert not (CONF_DIR / "experiment" / "best").exists()
    best = study.best_trial
    preset = compose_config(["experiment=best/search_mlp"],
                            extra_dir=workdir / "outputs" / "presets")
    direct = compose_config(best.user_attrs["overrides"])
    assert config_hash(preset, "d") == config_hash(direct, "d")
    assert preset.optimizer.lr == pytest.approx(best.params["optimizer.lr"])


def test_the_trial_of_a_killed_worker_is_failed_by_its_heartbeat_and_retried(
    sweep_file, tmp_path, monkeypatch
):
    import os
    import signal
    import subprocess
    import sys
    import time

    import optuna

    text = """
study_name: tiny_killed
overrides: [data.train_size=20000]
space:
  optimizer.lr: choice(0.1)
sampler: grid
pruner: none
"""
    # 60 epochs (the command line's last word): the worker is killed long before its end
    arguments = sweep_file(text, "trainer.epochs=60")
    arguments[0] = f"sweep={spec.SWEEPS_DIR / 'tiny.yaml'}"  # the worker cannot see monkeypatch
    worker = subprocess.Popen([sys.executable, "-m", "mlp_experiments.sweep", *arguments],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = arguments[1].split("=", 1)[1]
    deadline = time.monotonic() + 600  # generous: a busy machine starts the worker slowly
    while time.monotonic() < deadline:  # wait for the trial's first reported epoch
        assert worker.poll() is None, "the worker ended before its first epoch"
        time.sleep(0.5)
        try:
            with sqlite_lock(storage):
                (trial,) = optuna.load_study(study_name="tiny_killed", storage=storage).trials
        except (KeyError, ValueError):
            continue
        if trial.intermediate_values:
            break
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    monkeypatch.setattr(studies, "STALE_AFTER_S", 3)
    # No wait here: the sweep's worker itself waits for the killed trial's heartbeat to go
    # stale, fails it and runs its retry.
    study = run_sweep([*arguments, "trainer.epochs=2"])  # the retry may train shorter
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]
    killed, retried = study.trials
    assert "outcome" not in killed.user_attrs  # failed by the heartbeat, not by itself
    assert retried.params == killed.params
    assert studies.counted_trials(study) == 1


def test_a_trial_lost_after_its_outcome_was_noted_neither_counts_nor_costs_beside_its_retry():
    """A worker killed between noting a trial's outcome and Optuna's COMPLETE leaves the trial
    FAIL with outcome `completed`; the heartbeat queues its retry. The budget, the summary and
    the report's cost count the retry, not both (a tuned comparison once ran 3 tuning trials of
    one variant against 2 of the other this way)."""
    from mlp_experiments.report.cost import trials_cost
    from mlp_experiments.report.trials import status

    lr = {"optimizer.lr": FloatDistribution(0.01, 0.5, log=True)}
    study = optuna.create_study()

    def add(state, value=None, **attrs):
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params={"optimizer.lr": 0.1}, distributions=lr,
            user_attrs={"history": [{"val_acc": 0.5}] * 2, "cpu_s": 1.0, **attrs}))

    add(TrialState.COMPLETE, 0.5, outcome="completed")  # 0: ended
    add(TrialState.FAIL, outcome="completed")  # 1: lost after its end
    add(TrialState.FAIL, outcome="diverged")  # 2: ended, as FAIL
    add(TrialState.FAIL)  # 3: lost mid-training (no outcome)
    add(TrialState.COMPLETE, 0.6, outcome="completed", resumes=3)  # 4: 3's retry
    study.enqueue_trial({"optimizer.lr": 0.1}, user_attrs={"resumes": 1})  # 5: 1's retry

    assert studies.counted_trials(study) == 4  # 0, 2, 4 and the queued 5
    assert [t.number for t in studies.ended_trials(study)] == [0, 2, 4]
    assert [status(t) for t in study.trials[:5]] == ["complete", "interrupted", "diverged",
                                                      "interrupted", "complete"]
    cost = trials_cost(study.trials)
    assert (cost.trials, cost.epochs) == (3, 6)


FIVE_TRIALS = """
study_name: tiny
space:
  optimizer.lr: tag(log, interval(0.01, 0.5))
  model.hidden_sizes: choice([16], [32])
sampler: random
pruner: none
n_trials: 5
"""


def test_a_search_draws_the_figures_of_its_best_trials_only(sweep_file, tracking_uri, request):
    study = run_sweep(sweep_file(FIVE_TRIALS))
    trials = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    assert len(trials) == 5
    client = MlflowClient(tracking_uri)
    with_figures = [t.number for t in trials
                    if {a.path for a in client.list_artifacts(mlflow_run_of(t),
                                                              "plots")}
                    == {"plots/learning_curves.png", "plots/confusion_matrix.png",
                        "plots/predictions.png"}]
    assert with_figures == [t.number for t in trials[:BEST_TRIALS_PLOTTED]]
    for trial in trials:  # every trial keeps what evaluate and the figures are rebuilt from
        paths = {a.path for a in client.list_artifacts(mlflow_run_of(trial))}
        assert {"config.yaml", "parameters.md", "model_state"} <= paths


def test_a_grid_comparison_without_named_variants_draws_the_best_trial_of_each_cell(
        tracking_uri, request, monkeypatch):
    """Its variants are its searched values besides the seed: one best trial of each."""
    from mlp_experiments import evaluate
    from mlp_experiments.sweep.command import plot_best_trials

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment(request.node.name)
    study = optuna.create_study(direction="maximize")
    distributions = {"optimizer.lr": CategoricalDistribution([0.1, 0.5]),
                     "trainer.seed": IntDistribution(0, 1)}
    runs = {}
    for lr, seed, value in ((0.1, 0, 0.80), (0.1, 1, 0.82), (0.5, 0, 0.85), (0.5, 1, 0.84)):
        runs[lr, seed] = client.create_run(experiment).info.run_id
        study.add_trial(optuna.trial.create_trial(
            value=value, params={"optimizer.lr": lr, "trainer.seed": seed},
            distributions=distributions,
            user_attrs={"mlflow_run_id": runs[lr, seed], "history": []}))
    drawn = []
    monkeypatch.setattr(evaluate, "log_run_figures", lambda uri, run_id, history:
                        drawn.append(run_id))
    plot_best_trials(study, "comparison", tracking_uri)
    assert sorted(drawn) == sorted([runs[0.1, 1], runs[0.5, 0]])


def test_a_trial_config_is_composed_once_per_choice_of_groups(sweep_file, monkeypatch):
    composed = []
    real = worker.compose_config
    monkeypatch.setattr(worker, "compose_config", lambda o: composed.append(o) or real(o))
    run_sweep(sweep_file(FIVE_TRIALS, "tracking=none"))
    trial_compositions = [o for o in composed if "tracking.plots=false" in o]
    assert len(trial_compositions) == 1  # five trials, one choice of groups
