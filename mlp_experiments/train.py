"""`python -m mlp_experiments.train [overrides]`: compose the config, train, record in MLflow.

The config is composed and checked before torch and mlflow are imported, so a typo is
answered in about a second. `train(cfg)` is the function sweeps call for each trial.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mlp_experiments import cluster, provenance, stores, tracking
from mlp_experiments.config.checks import model_schema, model_shape, validate
from mlp_experiments.config.compose import (
    CONF_DIR,
    check_command_line,
    compose_config,
    group_dirs,
)
from mlp_experiments.config.identity import config_hash
from mlp_experiments.config.registry import register_configs
from mlp_experiments.errors import (
    UserError,
    exit_interrupted,
    exit_now,
    exit_on_mistake,
    raise_if_stopped,
    stop_on_signals,
    stops_over_errors,
)
from mlp_experiments.redact import RedactingStream, redact
from mlp_experiments.task import Task

log = logging.getLogger("mlp_experiments")
# What one run says of itself (its data, how it ended, its MLflow run): a sweep's trial lines
# say it instead (sweep/worker.py: trial_lines_only).
run_log = logging.getLogger("mlp_experiments.run")
register_configs()

def _hydra_context() -> tuple[list[str] | None, dict[str, str]]:
    """The command-line overrides and the chosen group options, when Hydra launched us."""
    if not HydraConfig.initialized():
        return None, {}
    hydra_cfg = HydraConfig.get()
    choices = {
        group: str(choice)
        for group, choice in hydra_cfg.runtime.choices.items()
        if not group.startswith(("hydra", "schema")) and choice is not None
    }
    return list(hydra_cfg.overrides.task), choices


def train(cfg: DictConfig, hooks: tuple[Callable, ...] = (), run_hash: str | None = None,
          overrides: list[str] | None = None, run: NewRun | None = None):
    """Train the configured model and record it; return the engine's FitResult.

    `hooks` are called after each epoch (after it is recorded) and may raise
    `engine.StopTraining`. `run_hash` is config_identity(cfg), where the caller has it already.
    `overrides` compose `cfg` (a sweep trial's), recorded so that mlp-rerun can compose it
    again; a run Hydra launched records its command line's. `run` is a sweep trial's: its
    journal, name and parent run, and no wait for its records at the end (its worker waits
    once for all its trials); otherwise a resumed run continues its own journal and MLflow run.
    """
    validate(cfg)
    if cfg.tracking.enabled:  # first: the sender loads MLflow while this process loads torch
        if run is None:  # a sweep checked the store before its first trial
            check_tracking(cfg.tracking.uri)
        tracking.Sender.start(cfg.tracking)
    run_hash = run_hash or config_identity(cfg)
    journals: list[Path] = []  # the run's, once it has one
    try:
        result = train_and_record(cfg, hooks, run_hash, overrides, run or NewRun(), journals)
    finally:
        if cfg.tracking.enabled and run is None:  # also when it failed: its status is on its way
            if journals:
                tracking.Sender.wait(journals)
            else:  # it failed before its journal: a sender still loading holds the output open
                tracking.Sender.stop()
    if cfg.tracking.enabled:
        result.journal = str(journals[0])
        result.run_id = tracking.read_mark(journals[0])["run_id"]
        if result.run_id and run is None:
            run_log.info("MLflow run %s in %s", result.run_id, redact(cfg.tracking.uri))
    return result


@dataclass
class NewRun:
    """A run's journal (a new one unless given), MLflow name and parent run."""

    journal_id: str | None = None
    name: str | None = None
    parent_run_id: str | None = None


def config_identity(cfg: DictConfig) -> str:
    """The hash of the configuration and its data: its checkpoint's name, a sweep trial's key."""
    from mlp_experiments import data

    return config_hash(cfg, data.release_digest(cfg.data))


def train_and_record(cfg: DictConfig, hooks: tuple[Callable, ...], run_hash: str,
                     overrides: list[str] | None, run: NewRun, journals: list[Path]):
    from mlp_experiments import data, engine

    device = engine.pick_device(cfg.trainer.device)
    dataset = data.load_dataset(cfg.data)
    run_log.info("data: %s from %s (%d train, %d validation, %d test examples)", dataset.name,
             dataset.source, len(dataset.train[1]), len(dataset.val[1]), len(dataset.test[1]))
    checkpoint = engine.checkpoint_path(cfg.trainer.checkpoint_dir, run_hash)
    with engine.claim(checkpoint):
        state = engine.load_checkpoint(checkpoint) if resuming(cfg, checkpoint) else None
        if state is not None and "outcome" in state["extra"]:
            return already_ended(state, checkpoint, cfg, run_hash, journals)
        journal_id = run.journal_id or (state["extra"].get("journal") if state else None) \
            or tracking.new_journal_id()
        journals.append(tracking.run_folder(cfg.trainer.checkpoint_dir, run_hash, journal_id))
        record = tracking.RunRecord(cfg.tracking, journals[0]) if cfg.tracking.enabled else None
        tags = run_tags(cfg, dataset, run_hash, device, state, overrides) if record else {}
        with record.recording(cfg, tags, dataset, run.parent_run_id, run.name) if record \
                else nullcontext():
            # Once the run's start is journaled: the sender opens the run in MLflow while
            # torch._dynamo loads here (~2 s, for the deterministic settings and the optimizer).
            engine.use_deterministic_algorithms(cfg.trainer.deterministic)
            engine.seed_everything(cfg.trainer.seed)
            setup = build(cfg, dataset, device)
            watchers = (record.log_epoch,) if record else ()
            result = fit(cfg, setup, checkpoint, state, (*watchers, *hooks),
                         {"journal": journal_id})
            if record:
                record_results(record, cfg, setup, dataset, result)
        engine.mark_finished(checkpoint, result.outcome)
    run_log.info("%s after %d epochs, checkpoint %s", result.outcome, len(result.history),
                 checkpoint)
    return result


def already_ended(state: dict, checkpoint, cfg: DictConfig, run_hash: str,
                  journals: list[Path]):
    """The result of a configuration whose checkpoint says it ended: nothing is trained; the
    run that recorded it stands (its journal goes to `journals`)."""
    from mlp_experiments import engine

    outcome = state["extra"]["outcome"]
    log.info("this configuration already ended (%s after %d epochs, checkpoint %s): nothing "
             "to do. Drop trainer.resume=true to train it again.", outcome,
             len(state["history"]), checkpoint)
    journals.append(tracking.run_folder(cfg.trainer.checkpoint_dir, run_hash,
                                        state["extra"]["journal"]))
    if cfg.tracking.enabled:  # sent already, unless an outage left some of it
        tracking.Sender.follow(journals[0])
    return engine.FitResult(list(state["history"]), outcome)


def check_tracking(uri: str) -> None:
    """The store answers and can be written (an outage later is the sender's to ride out)."""
    stores.check_database(uri, "tracking.uri")
    stores.check_local_store(uri)
    if uri.startswith(("http://", "https://")):
        stores.check_server(uri)


def resuming(cfg: DictConfig, checkpoint) -> bool:
    if cfg.trainer.resume and not checkpoint.exists():
        log.info("no checkpoint at %s: starting from epoch 1", checkpoint)
    return cfg.trainer.resume and checkpoint.exists()


def run_tags(cfg: DictConfig, dataset, run_hash: str, device, state: dict | None,
             overrides: list[str] | None) -> dict:
    command_line, choices = _hydra_context()
    overrides = overrides if overrides is not None else command_line
    tags = {
        "git_commit": provenance.git_commit(),
        "git_dirty": str(bool(provenance.code_diff())).lower(),  # the diff: artifact code.diff
        **provenance.environment(device.type),
        # what composes this config again with its code (mlp-rerun), as a JSON list
        **({"overrides": redact(json.dumps(overrides))} if overrides is not None else {}),
        "device": str(device),
        "config_hash": run_hash,
        "data_digest": dataset.digest,
        **{f"variant.{group}": choice for group, choice in choices.items()},
        **cluster.slurm_tags(),
    }
    if state is not None:
        tags["resumed_after_epoch"] = str(len(state["history"]))
    return tags


@dataclass
class Setup:
    """What one training run is made of."""

    model: Any
    objective: Any
    optimizer: Any
    scheduler: Any
    batches: dict


def build(cfg: DictConfig, dataset, device) -> Setup:
    from mlp_experiments import engine, losses, optim
    from mlp_experiments.batches import make_batches
    from mlp_experiments.config.policy import instantiate

    model = instantiate(cfg.model, in_features=dataset.in_features,
                        num_outputs=model_shape(cfg)[1]).to(device)
    regularization = cfg.regularization
    penalty = None
    if regularization.l2_penalty or regularization.l1_penalty:
        penalty = functools.partial(
            losses.weight_penalty, model, regularization.l2_penalty, regularization.l1_penalty,
            regularization.decay_biases,
        )
    objective = engine.Objective(
        instantiate(cfg.loss), losses.Scoring(Task.of(cfg.data)), penalty
    )
    optimizer = optim.build_optimizer(cfg.optimizer, regularization, model)
    batches = {
        split: make_batches(dataset, split, cfg.trainer.batch_size, device,
                                 cfg.data.loader.value)
        for split in ("train", "val", "test")
    }
    return Setup(model, objective, optimizer, optim.build_scheduler(cfg.scheduler, optimizer),
                 batches)


def fit(cfg: DictConfig, setup: Setup, checkpoint, state: dict | None, hooks: tuple,
        checkpoint_extra: dict):
    """The engine's loop with the progress display, the watchers and the caller's hooks."""
    from mlp_experiments import engine
    from mlp_experiments.progress import Progress

    progress = Progress(cfg.trainer.epochs)
    epoch_hooks = (progress.on_epoch, *hooks, lambda _epoch, _metrics: raise_if_stopped())
    settings = engine.FitSettings(
        epochs=cfg.trainer.epochs,
        seed=cfg.trainer.seed,
        patience=cfg.trainer.patience,
        precision=cfg.trainer.precision.value,
        checkpoint=checkpoint,
        checkpoint_extra=checkpoint_extra,
    )
    trained = torch_compile(setup.model) if cfg.trainer.compile else setup.model
    try:
        return engine.fit(
            trained, setup.objective, setup.optimizer, setup.scheduler, setup.batches, settings,
            on_epoch=lambda epoch, metrics: [hook(epoch, metrics) for hook in epoch_hooks],
            wrap_batches=progress.wrap_batches, state=state, raw_model=setup.model,
        )
    except KeyboardInterrupt:
        log.warning("interrupted: resume with trainer.resume=true (checkpoint %s)", checkpoint)
        raise


def record_results(record, cfg: DictConfig, setup: Setup, dataset, result) -> None:
    """Plots, parameter table and model in the run, then its status: FINISHED or not."""
    from mlp_experiments import engine, models

    predictions = None
    if cfg.tracking.plots and not dataset.regression:
        predictions = engine.predict(setup.model, setup.batches["test"])
    record.log_results(setup.model, result.history, dataset, predictions,
                       models.parameter_table(setup.model), model_output(cfg, dataset))
    raise_if_stopped()
    record.finish(result.outcome)


def model_output(cfg: DictConfig, dataset) -> str:
    """What the trained network returns, for the served model (see models.ServingModel)."""
    if dataset.regression:
        return "values"
    if model_schema(cfg).outputs == "probabilities":
        return "probabilities"
    return "binary" if model_shape(cfg)[1] == 1 else "logits"


def torch_compile(model):
    import torch

    return torch.compile(model)


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point; returns the best validation accuracy (RMSE for regression), the
    value Hydra sweepers optimise. A job Slurm requeued continues from its checkpoint."""
    if cluster.restart_count() and not cfg.trainer.resume:
        log.info("Slurm requeued this job (restart %d): it resumes from its checkpoint",
                 cluster.restart_count())
        cfg.trainer.resume = True
    try:
        result = train(cfg)
    except UserError as error:
        exit_on_mistake(error)
    if result.outcome == "diverged" and HydraConfig.get().mode == RunMode.RUN:
        # A script or a Slurm job tells success by the exit code alone (a multirun goes on
        # with its other jobs: Hydra's sweepers read the value, nan here).
        raise SystemExit(f"error: the training diverged at epoch {len(result.history)} (a "
                         f"non-finite training loss, recorded as outcome diverged): lower "
                         f"optimizer.lr, or add a penalty or a schedule.")
    return result.best(Task.of(cfg.data).objective)


def cli() -> None:
    """Hydra's own command line (`--cfg`, `--info`, `--help`, `-m`, `-cn`, `-cp`, `-cd`, shell
    completion); every job it can start is checked before Hydra composes or runs anything."""
    try:
        stop_on_signals()  # first: a signal during the checks ends the command quietly too
        with stops_over_errors():
            run_command_line()
    except KeyboardInterrupt as stop:  # a run is closed as interrupted, its checkpoint kept
        exit_interrupted(stop)


def run_command_line() -> None:
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args()  # Hydra's private parser: its flags, as Hydra reads them
    config_dir = CONF_DIR
    if args.config_path is not None:  # Hydra's -cp: relative to this file, or absolute
        config_dir = (Path(__file__).parent / args.config_path).resolve()
    shows_config = args.cfg or args.info or args.hydra_help
    try:
        if args.experimental_rerun:
            raise UserError(
                "--experimental-rerun loads a pickle file, which can run any code: a config is "
                "data, not code. Run the job again with its overrides (.hydra/overrides.yaml)."
            )
        where = {"config_name": args.config_name or "train", "config_dir": config_dir,
                 "extra_dir": args.config_dir}
        if not args.shell_completion:  # its arguments are completion queries, not overrides
            job, hydra_node = check_command_line(args.overrides, **where)
            runs_one_job = not (args.help or shows_config or args.multirun
                                or hydra_node.mode == RunMode.MULTIRUN)
            if runs_one_job and job.tracking.enabled:
                # Now, not in train(): the sender loads MLflow while Hydra composes again.
                check_tracking(job.tracking.uri)
                tracking.Sender.start(job.tracking)
    except UserError as error:
        exit_on_mistake(error)
    if args.help:
        print(redact(app_help(args.overrides, **where)))
        return
    with contextlib.redirect_stdout(RedactingStream(sys.stdout)) if shows_config \
            else nullcontext():
        main()


def app_help(overrides: list[str], config_name: str, config_dir: Path,
             extra_dir: str | None) -> str:
    """What Hydra's --help prints with its default template (the options of each config
    group, then the config these overrides compose) in a fraction of its time: Hydra copies
    its config repository, typed schemas included, once per group it lists."""
    folders = [Path(config_dir), *([Path(extra_dir)] if extra_dir else [])]
    groups: dict[str, set[str]] = {}
    for folder in folders:
        for group in group_dirs(folder):
            groups.setdefault(group.name, set()).update(
                option.relative_to(group).with_suffix("").as_posix()
                for option in group.rglob("*.yaml"))
    lines = ["train is powered by Hydra.", "", "== Configuration groups ==",
             "Compose your configuration from those groups (group=option)", ""]
    lines += [f"{group}: {', '.join(sorted(options))}" for group, options in sorted(groups.items())]
    lines += ["", "", "== Config ==", "Override anything in the config (foo.bar=value)", "",
              OmegaConf.to_yaml(compose_config(overrides, config_name, config_dir, extra_dir)),
              "Powered by Hydra (https://hydra.cc)", "Use --hydra-help to view Hydra specific help"]
    return "\n".join(lines)


if __name__ == "__main__":
    cli()
    exit_now()
