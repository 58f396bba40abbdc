"""`python -m mlp_experiments.train [overrides]`: compose the config, train, record in MLflow.

The config is composed and checked before torch and mlflow are imported, so a typo is
answered in about a second. `train(cfg)` is the function sweeps call for each trial.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mlp_experiments.config import (
    CONF_DIR,
    LOSS_KINDS,
    PROBABILITY_MODELS,
    UserError,
    check_command_line,
    config_hash,
    data_task,
    register_configs,
    validate,
)

log = logging.getLogger("mlp_experiments")
register_configs()

def _hydra_context() -> tuple[str, dict[str, str]]:
    """The command-line overrides and the chosen group options, when Hydra launched us."""
    if not HydraConfig.initialized():
        return "", {}
    hydra_cfg = HydraConfig.get()
    choices = {
        group: str(choice)
        for group, choice in hydra_cfg.runtime.choices.items()
        if not group.startswith(("hydra", "schema")) and choice is not None
    }
    return " ".join(hydra_cfg.overrides.task), choices


def train(cfg: DictConfig, hooks: tuple[Callable, ...] = (), parent_run_id: str | None = None):
    """Train the configured model; return the engine's FitResult (history and outcome).

    `hooks` are called after each epoch (after it is recorded) and may raise
    `engine.StopTraining`; `parent_run_id` nests the MLflow run under a sweep's parent run."""
    validate(cfg)
    from mlp_experiments import data, engine, losses, models, optim
    from mlp_experiments.policy import instantiate
    from mlp_experiments.progress import Progress

    tracker = None
    if cfg.tracking.enabled:
        from mlp_experiments import tracking

        tracker = tracking.MlflowTracker(cfg.tracking)
        tracker.connect()
    engine.seed_everything(cfg.trainer.seed)
    device = engine.pick_device(cfg.trainer.device)
    dataset = data.load_dataset(cfg.data)
    run_hash = config_hash(cfg, dataset.digest)
    checkpoint = engine.checkpoint_path(cfg.trainer.checkpoint_dir, run_hash)
    state = None
    if cfg.trainer.resume:
        if checkpoint.exists():
            state = engine.load_checkpoint(checkpoint)
            log.info("resuming from %s after epoch %d", checkpoint, len(state["history"]))
        else:
            log.info("no checkpoint at %s: starting from epoch 1", checkpoint)

    model = instantiate(cfg.model, in_features=dataset.in_features,
                        num_outputs=num_outputs(cfg, dataset)).to(device)
    regularization = cfg.regularization
    penalty = None
    if regularization.l2_penalty or regularization.l1_penalty:
        penalty = functools.partial(
            losses.weight_penalty, model, regularization.l2_penalty, regularization.l1_penalty,
            regularization.decay_biases,
        )
    objective = engine.Objective(
        instantiate(cfg.loss), losses.Scoring(regression=dataset.regression), penalty
    )
    optimizer = optim.build_optimizer(cfg.optimizer, regularization, model)
    scheduler = optim.build_scheduler(cfg.scheduler, optimizer)
    batches = {
        split: data.make_batches(dataset, split, cfg.trainer.batch_size, device,
                                 cfg.data.loader.value)
        for split in ("train", "val", "test")
    }
    progress = Progress(cfg.trainer.epochs)
    epoch_hooks = [progress.on_epoch]
    run_id = None
    if tracker:
        overrides, choices = _hydra_context()
        tags = {
            "git_commit": tracking.git_commit(),
            "overrides": overrides,
            "device": str(device),
            "config_hash": run_hash,
            "data_digest": dataset.digest,
            **{f"variant.{group}": choice for group, choice in choices.items()},
        }
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        resume_run_id = state["extra"].get("run_id") if state else None
        run_id = tracker.start(cfg, tags, resume_run_id, dataset)
        epoch_hooks.insert(0, tracker.log_epoch)
    epoch_hooks += hooks  # after the record: a hook that stops training loses no epoch

    trained = torch_compile(model) if cfg.trainer.compile else model
    settings = engine.FitSettings(
        epochs=cfg.trainer.epochs,
        seed=cfg.trainer.seed,
        patience=cfg.trainer.patience,
        precision=cfg.trainer.precision.value,
        checkpoint=checkpoint,
        checkpoint_extra={"run_id": run_id} if run_id else {},
    )
    try:
        result = engine.fit(
            trained, objective, optimizer, scheduler, batches, settings,
            on_epoch=lambda epoch, metrics: [hook(epoch, metrics) for hook in epoch_hooks],
            wrap_batches=progress.wrap_batches, state=state, raw_model=model,
        )
    except KeyboardInterrupt:
        if tracker:
            tracker.abort("interrupted")
        log.warning("interrupted: resume with trainer.resume=true (checkpoint %s)", checkpoint)
        raise
    except BaseException:
        if tracker:
            tracker.abort("crashed")
        raise
    log.info("%s after %d epochs, checkpoint %s", result.outcome, len(result.history), checkpoint)
    if tracker:
        predictions = None if dataset.regression else engine.predict(model, batches["test"])
        tracker.log_results(model, result.history, dataset, predictions,
                            models.parameter_table(model), model_output(cfg, dataset))
        tracker.finish(result.outcome)
        log.info("MLflow run %s in %s", run_id, cfg.tracking.uri)
    return result


def num_outputs(cfg: DictConfig, dataset) -> int:
    """One output for regression and for a binary loss (a single logit), else one per class."""
    kind = LOSS_KINDS.get(cfg.loss._target_)
    if dataset.regression or (kind is not None and kind.task == "binary"):
        return 1
    return len(dataset.classes)


def model_output(cfg: DictConfig, dataset) -> str:
    """What the trained network returns, for the served model (see models.ServingModel)."""
    if dataset.regression:
        return "values"
    if cfg.model._target_ in PROBABILITY_MODELS:
        return "probabilities"
    return "binary" if num_outputs(cfg, dataset) == 1 else "logits"


def torch_compile(model):
    import torch

    return torch.compile(model)


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point; returns the best validation accuracy (RMSE for regression), the
    value Hydra sweepers optimise."""
    try:
        regression = data_task(cfg.data)[0] == "regression"
        return train(cfg).best("val_rmse" if regression else "val_acc")
    except UserError as error:
        raise SystemExit(f"error: {error}") from None


def cli() -> None:
    """Hydra's own command line (`--cfg`, `--info`, `--help`, `-m`, `-cn`, `-cp`, `-cd`, shell
    completion); every job it can start is checked before Hydra composes or runs anything."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args()
    config_dir = CONF_DIR
    if args.config_path is not None:  # Hydra's -cp: relative to this file, or absolute
        config_dir = (Path(__file__).parent / args.config_path).resolve()
    try:
        if args.experimental_rerun:
            raise UserError(
                "--experimental-rerun loads a pickle file, which can run any code: a config is "
                "data, not code. Run the job again with its overrides (.hydra/overrides.yaml)."
            )
        if not args.shell_completion:  # its arguments are completion queries, not overrides
            check_command_line(args.overrides, config_name=args.config_name or "train",
                               config_dir=config_dir, extra_dir=args.config_dir)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    main()


if __name__ == "__main__":
    cli()
