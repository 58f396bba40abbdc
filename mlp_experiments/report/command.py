"""`mlp-report sweep=<name> [sweep.key=value ...] [report.out_dir=DIR] [training overrides]`

Writes a Markdown report of the Optuna study that `mlp-sweep` ran, with its figures, to
`DIR/<study_name>/report.md` (DIR defaults to `outputs/reports` under the working directory),
and logs the folder to the study's MLflow parent run (its `tracking.uri`, from the sweep file and
the training overrides). A comparison (named variants x seeds) gets per-variant means with 95%
confidence intervals and paired t-tests (Holm over the report's contrasts, or the race's
verdicts) that say which differences exceed the seed-to-seed noise; a search gets its top
trials, parameter importances and the best configuration as a command. MLflow, Optuna and
matplotlib are imported after the arguments are checked: a mistake is answered at once.
`summarise_in_mlflow` is what the sweep command calls when a study ends.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from mlp_experiments import cli
from mlp_experiments.cli import described
from mlp_experiments.config.compose import compose_config
from mlp_experiments.errors import UserError, exit_on_mistake
from mlp_experiments.stores import check_database, check_folder, sqlite_path
from mlp_experiments.sweep.spec import (
    SweepConfig,
    available_sweeps,
    describe_arguments,
    load_sweep,
    split_arguments,
    storage_url,
)
from mlp_experiments.sweep.study import make_storage

REPORTS_DIR = Path("outputs") / "reports"  # under the working directory


@dataclass
class ReportSettings:
    out_dir: str = described(str(REPORTS_DIR), "writes OUT_DIR/<study_name>/report.md and its "
                                               "figures")


@dataclass
class ReportKeys:
    report: ReportSettings = field(default_factory=ReportSettings)
    sweep: SweepConfig = field(default_factory=SweepConfig)


COMMAND = cli.Command(
    "report", "Write the Markdown report of a study mlp-sweep ran, and log it to the study's "
    "MLflow parent run.", ReportKeys,
    choices={"sweep": f"the sweep: sweeps/<name>.yaml ({available_sweeps()}) or a YAML file"},
    passed_on=("sweep",), training=True,
    notes="sweep.* keys: the same as the sweep command's, to find the same study.\nAny other "
          "KEY=VALUE is a training override, as the sweep's: tracking.uri=... or tracking=none "
          "say where (whether) to log the report.",
    describe=lambda cfg, arguments: {"report": cfg.report, **describe_arguments(arguments)},
)


def summarise_in_mlflow(study, sweep: DictConfig, tracking_cfg: DictConfig,
                        parent_run_id: str, preset: Path | None = None) -> None:
    """Log the report, `trials.csv`, the best value and the best configuration's preset (the
    file the sweep wrote, when it wrote one) to the study's MLflow parent run."""
    import mlflow
    from optuna.trial import TrialState

    from mlp_experiments.report.markdown import write_report
    from mlp_experiments.report.trials import study_metric

    client = mlflow.MlflowClient(tracking_cfg.uri)
    metric = study_metric(study, sweep)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            client.log_metric(parent_run_id, f"best_{metric}", study.best_value)
        if preset is not None:
            client.log_text(parent_run_id, preset.read_text(), "best_config.yaml")
        report = write_report(study, sweep, folder / "report", detailed=True)
        client.log_artifacts(parent_run_id, str(report.parent), "report")
        # Each trial's per-epoch history is in its own MLflow run; here it would drown the table.
        frame = study.trials_dataframe().drop(columns=["user_attrs_history"], errors="ignore")
        frame.to_csv(folder / "trials.csv", index=False)
        client.log_artifact(parent_run_id, str(folder / "trials.csv"))
    client.set_terminated(parent_run_id)  # its end time: the last time the study was summarised


def load_existing_study(sweep: DictConfig, name: str):
    import optuna

    url = storage_url(sweep)
    missing = UserError(
        f"No study '{sweep.study_name}' in {url}: run `mlp-sweep "
        f"sweep={name}` first (with the same sweep.* overrides)."
    )
    # Opening a SQLite URL creates the file: a typo would leave an empty database behind.
    database = sqlite_path(url)
    if database is not None and not database.is_file():
        raise missing
    check_database(url, "sweep.storage")
    try:
        return optuna.load_study(study_name=sweep.study_name, storage=make_storage(url))
    except KeyError:
        raise missing from None


def run_report(arguments: list[str]) -> Path:
    cfg, arguments = cli.parse(COMMAND, arguments)
    out = Path(cfg.report.out_dir)
    check_folder(out, "report.out_dir")
    name, sweep_overrides, training = split_arguments(arguments)
    sweep = load_sweep(name, sweep_overrides)
    study = load_existing_study(sweep, name)
    from mlp_experiments.report.markdown import write_report  # matplotlib: after the checks

    path = write_report(study, sweep, out / sweep.study_name)
    print(path)
    parent_run_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_run_id:
        tracking = compose_config([*sweep.overrides, *training]).tracking
        if tracking.enabled:
            log_report(tracking.uri, parent_run_id, path.parent)
    return path


def log_report(uri: str, run_id: str, folder: Path) -> None:
    import mlflow

    try:
        mlflow.MlflowClient(uri).log_artifacts(run_id, str(folder), "report")
    except mlflow.exceptions.MlflowException as error:
        raise UserError(
            f"The report is written, but logging it to the MLflow run {run_id} in {uri} failed "
            f"({error}). Point tracking.uri at the sweep's store, or skip MLflow with "
            f"tracking=none."
        ) from None
    print(f"logged to MLflow run {run_id} (artifact path report)")


def main(arguments: list[str] | None = None) -> None:
    try:
        run_report(sys.argv[1:] if arguments is None else arguments)
    except UserError as error:
        exit_on_mistake(error)
