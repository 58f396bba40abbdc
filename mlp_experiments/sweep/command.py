"""`mlp-sweep sweep=<name> [sweep.key=value] [training overrides]`

Runs the Optuna study that `sweeps/<name>.yaml` describes. Every trial trains in-process through
`train()`, reports its validation metric each epoch to the pruner and is an MLflow child run of
the study's parent run. Running the command again resumes the study until `n_trials` trials
have finished in total; `sweep.n_workers=K` runs K worker processes on the same storage.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from mlp_experiments import cli
from mlp_experiments.config.compose import compose_config
from mlp_experiments.config.registry import register_configs
from mlp_experiments.errors import (
    UserError,
    exit_interrupted,
    exit_on_mistake,
    stop_on_signals,
    stops_over_errors,
)
from mlp_experiments.redact import redact
from mlp_experiments.stores import check_database, sqlite_path
from mlp_experiments.sweep import stages
from mlp_experiments.sweep.presets import best_preset_command, publish_best_preset
from mlp_experiments.sweep.space import parse_space
from mlp_experiments.sweep.spec import (
    SweepConfig,
    available_sweeps,
    budget,
    check_settings,
    check_space,
    describe_arguments,
    load_sweep,
    split_arguments,
    storage_url,
)
from mlp_experiments.sweep.study import (
    budget_lock,
    counted_trials,
    ended_trials,
    follow_left_over,
    mlflow_run_of,
    more_to_run,
    open_study,
)
from mlp_experiments.sweep.worker import LocalWorkers, ParentRun, past

BEST_TRIALS_PLOTTED = 3


@dataclass
class SweepKeys:
    sweep: SweepConfig = field(default_factory=SweepConfig)


COMMAND = cli.Command(
    "sweep", "Run the Optuna study a sweep file describes, or resume it: every trial trains "
    "through train() and is an MLflow child run of the study's parent run.", SweepKeys,
    choices={"sweep": f"the sweep: sweeps/<name>.yaml ({available_sweeps()}) or a YAML file"},
    passed_on=("sweep",), training=True,
    notes="sweep.* keys override the sweep file (shown: the defaults of a file that leaves them "
          "out).\nAny other KEY=VALUE is a training override for every trial, e.g. "
          "trainer.epochs=3, tracking.uri=... (mlp-train --help lists them).",
    describe=lambda cfg, arguments: describe_arguments(arguments),
)


def print_plan(sweep: DictConfig, distributions: dict, study, n_trials: int, training) -> None:
    done = counted_trials(study)
    on_slurm = sweep.launcher == "slurm"
    where = f"on {sweep.n_workers} worker(s)" + (" in one Slurm job array" if on_slurm else "")
    lines = [f"study {sweep.study_name} in {redact(storage_url(sweep))}",
             f"  objective: {sweep.direction} {sweep.metric}"]
    if stages.is_staged(sweep):
        lines += [*stages.plan_lines(sweep), f"  runs {where}"]
    else:
        lines += [f"  sampler {sweep.sampler} {dict(sweep.sampler_args) or ''}(seed "
                  f"{sweep.seed}), pruner {sweep.pruner} "
                  f"{dict(sweep.pruner_args) or ''}".rstrip(),
                  f"  trials: {n_trials} in total, {done} already there, "
                  f"{max(n_trials - done, 0)} to run {where}"]
    fixed = redact(" ".join([*sweep.overrides, *training]))
    lines.append(f"  fixed overrides: {fixed or '(none)'}")
    lines += [f"  variant {name}: {' '.join(o)}" for name, o in sweep.variants.items()]
    lines += [f"  {key}: {sweep.space[key]} -> {d}" for key, d in distributions.items()
              if key in sweep.space]
    if on_slurm and sqlite_path(storage_url(sweep)) is not None:
        lines.append("  note: a SQLite storage is safe on Slurm only where every task sees this "
                     "file on one filesystem with working POSIX locks (one node, Lustre, GPFS; "
                     "not NFS): across nodes use PostgreSQL (docs/scaling.md, Running on a "
                     "Slurm cluster)")
    print("\n".join(lines), flush=True)


def run_sweep(arguments: list[str]):
    """Plan, check, run the workers (a staged comparison: its stages), write a search's best
    preset, then summarise the study in its MLflow parent run."""
    register_configs()
    _, arguments = cli.parse(COMMAND, arguments)
    name, sweep_overrides, training = split_arguments(arguments)
    sweep = load_sweep(name, sweep_overrides)
    check_database(storage_url(sweep), "sweep.storage")
    slurm_settings = None
    if sweep.launcher == "slurm":  # its settings checked before anything starts
        from mlp_experiments.sweep import slurm

        slurm_settings = slurm.job_settings(sweep)
    deadline = time.time() + sweep.timeout if sweep.timeout else None
    staged = stages.is_staged(sweep)
    main_sweep = check_staged(sweep, training) if staged else sweep
    distributions = parse_space(main_sweep.space)
    if not staged:
        check_space(sweep, training, distributions)
    base = compose_config([*sweep.overrides, *training])
    tracking_uri = base.tracking.uri if base.tracking.enabled else None
    if tracking_uri:
        check_database(tracking_uri, "tracking.uri")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the plan says which studies open
    study = open_study(main_sweep, distributions, tracking_uri)
    kind = "comparison" if sweep.sampler == "grid" or staged else "search"
    study.set_user_attr("kind", kind)
    study.set_user_attr("metric", sweep.metric)
    n_trials = counted_trials(study) if staged else budget(sweep, distributions)
    print_plan(sweep, distributions, study, n_trials, training)
    parent_run_id = None
    if tracking_uri:  # one parent run, also when several commands start at once
        from mlp_experiments.sweep.runs import study_parent_run

        with budget_lock(storage_url(sweep), sweep.study_name):
            parent_run_id = study_parent_run(base.tracking, study, sweep)
        tuning = stages.tuning_studies(sweep).values() if staged else ()
        follow_left_over([study, *(s for s in tuning if s is not None)])
    workers = Workers(training, storage_url(sweep), tracking_uri, deadline, slurm_settings)
    with workers.local:  # its processes serve every stage
        if staged:
            stages.run_stages(sweep, workers.stage_runner(base.tracking), parent_run_id, study)
        else:
            workers.run(sweep, parent_run_id, study, n_trials)
    ended = ended_trials(study)
    preset = publish_best_preset(study, sweep, kind)
    if parent_run_id:  # the runs of lost workers this process found, if any
        from mlp_experiments import tracking

        tracking.Sender.wait()
    if parent_run_id and all_sent(study):
        from mlp_experiments.report.command import summarise_in_mlflow

        print(f"drawing the best trials' figures and the study's report into MLflow "
              f"(run {parent_run_id})...", flush=True)
        plot_best_trials(study, kind, tracking_uri)
        summarise_in_mlflow(study, sweep, base.tracking, parent_run_id, preset)
    elif parent_run_id:
        print(f"the report is not in MLflow: some trials' records are not there yet (see the "
              f"warnings above); once they are, `uv run mlp-report sweep={name}` logs it",
              flush=True)
    if ended and all(t.user_attrs["outcome"] in ("error", "diverged") for t in ended):
        raise UserError(
            f"Every trial of study {sweep.study_name} failed ({len(ended)}): the errors are "
            f"in the output above and in each trial's MLflow run."
        )
    print_summary(study, sweep, kind, name)
    return study


def all_sent(study) -> bool:
    """Are the records of every finished trial in MLflow? (An outage can outlast a sweep.)"""
    from mlp_experiments import tracking

    return all(tracking.shipped(Path(t.user_attrs["journal"])) for t in ended_trials(study)
               if "journal" in t.user_attrs)


def print_summary(study, sweep: DictConfig, kind: str, name: str) -> None:
    """What the study found and the commands to type next."""
    from optuna.trial import TrialState

    from mlp_experiments.report.cost import total_cost
    from mlp_experiments.report.markdown import comparison_summary

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    lines = [f"study {sweep.study_name}: {len(ended_trials(study))} trials ended"]
    if kind == "comparison":
        lines += comparison_summary(study, sweep)
    else:
        best = study.best_trial
        values = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in best.params.items())
        lines += [f"  best: trial {best.number}, {sweep.metric} {best.value:.4f}  {values}",
                  f"  train it: {best_preset_command(sweep.study_name)}"]
    tuning = stages.tuning_studies(sweep) if sweep.tune is not None else None
    lines.append(f"  cost: {total_cost(study, tuning).describe()}")
    lines.append(f"  report: uv run mlp-report sweep={name}")
    print("\n".join(lines), flush=True)


def check_staged(sweep: DictConfig, training: list[str]) -> DictConfig:
    """A staged comparison's settings and every stage's trials checked before any training;
    returns the evaluation stage's sweep (the study `sweep.study_name`)."""
    stages.check_stages(sweep, training)
    stage_sweeps = [stages.tuning_sweep(sweep, variant) for variant in sweep.variants] \
        if sweep.tune is not None else []
    evaluation = stages.evaluation_sweep(sweep, {})
    for stage in [*stage_sweeps, evaluation]:
        check_settings(stage)
    checked_groups = {}
    for stage in [*stage_sweeps, evaluation]:
        check_space(stage, training, parse_space(stage.space), checked_groups)
    return evaluation


@dataclass
class Workers:
    """How this command runs a study's workers: local processes or a Slurm job array."""

    training: list[str]
    storage: str  # the sweep's Optuna storage URL
    tracking_uri: str | None
    deadline: float | None
    slurm_settings: dict | None

    def __post_init__(self):
        self.local = LocalWorkers(self.training, self.tracking_uri, self.deadline)

    def run(self, sweep: DictConfig, parent_run_id, study, n_trials: int) -> None:
        """Run workers until the study has n_trials; refuse to go on when workers died and
        trials are left (a new command resumes them)."""
        if self.slurm_settings is not None:
            lost_workers = run_on_slurm(sweep, self.slurm_settings, self.training,
                                        parent_run_id, self.tracking_uri, self.deadline, study,
                                        n_trials)
        else:
            lost_workers = self.local.run(sweep, parent_run_id)
        ended = ended_trials(study)
        if lost_workers and len(ended) < n_trials and not past(self.deadline):
            raise UserError(
                f"{len(ended)} of {n_trials} trials ended and {lost_workers} worker(s) died "
                f"(see their output): run the same command again to finish the study."
            )

    def stage_runner(self, tracking_cfg: DictConfig) -> stages.StageRunner:
        from mlp_experiments.sweep import runs

        def run_stage(stage: DictConfig, parent) -> None:
            study = open_study(stage, parse_space(stage.space), self.tracking_uri)
            self.run(stage, parent, study, budget(stage, parse_space(stage.space)))
            if past(self.deadline) and more_to_run(study, stage.n_trials):
                raise UserError(f"sweep.timeout passed during {stage.study_name}: run the same "
                                f"command again to go on from there.")

        def nested_run(study, name: str, parent: str) -> str:
            with budget_lock(self.storage, name):  # one run, also when commands start at once
                return runs.nested_run(tracking_cfg, study, name, parent)

        def open_stage(stage: DictConfig):
            return open_study(stage, parse_space(stage.space), self.tracking_uri)

        return stages.StageRunner(run_stage, open_stage,
                                  nested_run if self.tracking_uri else None)


def run_on_slurm(sweep: DictConfig, settings: dict, training: list[str],
                 parent_run_id: ParentRun, tracking_uri: str | None, deadline: float | None,
                 study, n_trials: int) -> int:
    """Submit the workers as a Slurm job array with `settings` (slurm.job_settings), unless the
    study has nothing left to run, and follow the study until it is complete; return how many
    workers died before that."""
    from optuna.trial import TrialState

    from mlp_experiments.sweep import slurm

    if not more_to_run(study, n_trials) and \
            not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        print("the study has its n_trials: no job to submit", flush=True)
        return 0
    jobs = slurm.submit_workers(sweep, settings, training, parent_run_id, tracking_uri,
                                deadline)
    return slurm.follow(study, jobs, n_trials)


def plot_best_trials(study, kind: str, tracking_uri: str) -> None:
    """Draw the figures of the trials that matter once the study ran, from their MLflow records:
    a search's best BEST_TRIALS_PLOTTED, a comparison's best trial of each variant (the report
    in the parent run has each variant's mean). Runs that have their figures are left alone."""
    import mlflow
    from optuna.trial import TrialState

    from mlp_experiments import evaluate
    from mlp_experiments.report.stats import best_first
    from mlp_experiments.report.trials import variant_of

    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if mlflow_run_of(t) and "reused_from" not in t.user_attrs]
    trials = best_first(trials, lambda t: t.value, study.direction.name == "MAXIMIZE")
    if kind == "comparison":
        best_of_variant = {}
        for trial in trials:
            best_of_variant.setdefault(variant_of(trial), trial)
        chosen = list(best_of_variant.values())
    else:
        chosen = trials[:BEST_TRIALS_PLOTTED]
    client = mlflow.MlflowClient(tracking_uri)
    for trial in chosen:
        run_id = mlflow_run_of(trial)
        if not client.list_artifacts(run_id, "plots"):
            evaluate.log_run_figures(tracking_uri, run_id, trial.user_attrs["history"])


def main(arguments: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The figures of the best trials are drawn from their records after the study: no bars.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        stop_on_signals()
        with stops_over_errors():
            try:
                run_sweep(sys.argv[1:] if arguments is None else arguments)
            except UserError as error:
                exit_on_mistake(error)
    except KeyboardInterrupt as stop:
        print("interrupted: run the same command again to resume the study (the interrupted "
              "trial continues from its checkpoint)", file=sys.stderr)
        exit_interrupted(stop)
