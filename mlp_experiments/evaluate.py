"""`mlp-evaluate evaluate.run_id=<id> [tracking.uri=...] [evaluate.out_dir=evaluation]`

Rebuilds a run's network from its `config.yaml`, loads the weights the run logged
(`model_state/state_dict.pt`, with torch's weights-only loader: nothing the tracking store
serves is unpickled), predicts the test set the run was trained against in the run's batch
size, checks the accuracy against the one the run logged, and writes a confusion matrix and a
per-class accuracy table to `<evaluate.out_dir>/<run_id>/`.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mlp_experiments import cli
from mlp_experiments.cli import described
from mlp_experiments.config.checks import model_shape, validate
from mlp_experiments.config.choices import DatasetName
from mlp_experiments.config.registry import SCHEMAS, data_schema, register_configs
from mlp_experiments.errors import UserError, exit_on_mistake
from mlp_experiments.stores import check_folder

# A config.yaml from a tracking store is input: only our own model classes are built from it.
MODEL_SCHEMAS = {schema._target_: schema for schema in SCHEMAS["model"].values()}
STATE_DICT = "model_state/state_dict.pt"
RETRAIN = "Train the configuration again, or evaluate a run from a store you trust."


@dataclass
class EvaluateSettings:
    run_id: str = described(MISSING, "the MLflow run to reload (its id, on the run's page)")
    out_dir: str = described("evaluation", "writes OUT_DIR/<run_id>/confusion_matrix.png and "
                                           "per_class_accuracy.md")


@dataclass
class EvaluateKeys:
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    tracking: cli.TrackingStore = field(default_factory=cli.TrackingStore)


COMMAND = cli.Command(
    "evaluate", "Reload a run's network and weights, predict its test set and check the accuracy "
    "against the one it logged.", EvaluateKeys,
)


RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow's run ids: uuid4().hex


def check_store(uri: str) -> None:
    """The store must exist: opening a missing SQLite file would create an empty one (and then
    report that the run is not there), a missing server would be retried for minutes."""
    from mlp_experiments.stores import check_database, check_server, sqlite_path

    if uri.startswith(("http://", "https://")):
        check_server(uri)
    elif (database := sqlite_path(uri)) is not None and not database.is_file():
        raise UserError(
            f"No MLflow store at {uri}: pass the store the run was recorded in, "
            f"tracking.uri=<uri> (or set MLFLOW_TRACKING_URI)."
        )
    check_database(uri, "tracking.uri")


def typed(node: DictConfig, schema, what: str) -> DictConfig:
    """`node` checked against its schema again: the schema's keys and types, its enums."""
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as error:
        raise UserError(f"The run's {what} config does not fit its schema: {error}") from None


def run_config(client, run_id: str, folder: str) -> DictConfig:
    """The run's resolved config with its data and model sections typed again, validated as
    `train` validates its own."""
    import mlflow

    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(
            f"No MLflow run {run_id} in {client.tracking_uri}: check the id (the MLflow UI "
            f"shows it on the run page) and tracking.uri."
        ) from None
    try:
        path = client.download_artifacts(run_id, "config.yaml", folder)
    except mlflow.exceptions.MlflowException:
        raise UserError(
            f"Run {run_id} has no config.yaml: it was not recorded by mlp_experiments.train."
        ) from None
    cfg = plain_config(Path(path), run_id)
    if cfg.get("data", {}).get("name") not in {name.value for name in DatasetName}:
        raise UserError(f"Run {run_id}'s config.yaml names no dataset we read (data.name): it "
                        f"was not written by train.")
    cfg.data = typed(cfg.data, data_schema(DatasetName(cfg.data.name)), "data")
    target = cfg.model.get("_target_")
    if target not in MODEL_SCHEMAS:
        raise UserError(
            f"The run's model._target_ {target!r} is not one of our models "
            f"({', '.join(MODEL_SCHEMAS)}): its config.yaml was not written by train."
        )
    cfg.model = typed(cfg.model, MODEL_SCHEMAS[target], "model")
    validate(cfg)
    return cfg


def plain_config(path: Path, run_id: str) -> DictConfig:
    """A run's config.yaml as train writes it: a YAML mapping of plain values (no tags, no
    interpolation: train writes the resolved config)."""
    import yaml

    written_by = "train writes a resolved mapping of plain values"
    try:
        cfg = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as error:
        problem = str(error).splitlines()[0]
        raise UserError(f"Run {run_id}'s config.yaml cannot be read as a config ({problem}): "
                        f"{written_by}.") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"Run {run_id}'s config.yaml is not a mapping: {written_by}.")
    interpolated = interpolations(cfg)
    if interpolated:
        raise UserError(f"Run {run_id}'s config.yaml holds an interpolation at "
                        f"{interpolated[0]}: {written_by}.")
    return cfg


def interpolations(node, path: str = "") -> list[str]:
    """The keys of a config that hold an interpolation, dotted."""
    found = []
    for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        where = f"{path}.{key}".lstrip(".") if isinstance(node, DictConfig) else f"{path}[{key}]"
        if OmegaConf.is_interpolation(node, key):
            found.append(where)
        elif isinstance(node[key], DictConfig | ListConfig):
            found += interpolations(node[key], where)
    return found


def build_network(cfg: DictConfig, dataset):
    """The run's network, untrained, built as `train` builds it."""
    from hydra.errors import InstantiationException

    from mlp_experiments.config.policy import instantiate
    try:
        return instantiate(cfg.model, in_features=dataset.in_features,
                           num_outputs=model_shape(cfg)[1])
    except InstantiationException as error:
        raise UserError(f"The run's model cannot be built: {error.__cause__ or error}") from None


def load_weights(network, client, run_id: str, folder: str) -> None:
    """The run's logged state dict, read by torch's weights-only loader (tensors and plain
    containers, no other object is ever constructed)."""
    import mlflow
    import torch

    try:
        path = client.download_artifacts(run_id, STATE_DICT, folder)
    except (mlflow.exceptions.MlflowException, OSError):
        raise UserError(
            f"Run {run_id} has no {STATE_DICT}: it did not finish (runs log their weights "
            f"when training ends). {RETRAIN}"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged file or a payload raises any of several types
        raise UserError(
            f"Run {run_id}'s {STATE_DICT} is damaged or holds more than tensors "
            f"({type(error).__name__}); torch's weights-only loader refused it. {RETRAIN}"
        ) from None
    try:
        network.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise UserError(
            f"Run {run_id}'s {STATE_DICT} does not fit the network its config.yaml describes "
            f"({error}). {RETRAIN}"
        ) from None


def predict_test_set(network, dataset, cfg: DictConfig) -> np.ndarray:
    """Predicted class of every test example, computed as the engine computed the run's
    test_acc: the run's batching and batch size, its precision, its class rule."""
    import torch

    from mlp_experiments import engine
    from mlp_experiments.batches import make_batches

    batches = make_batches(dataset, "test", cfg.trainer.batch_size, torch.device("cpu"),
                                cfg.data.loader.value)
    bf16 = cfg.trainer.precision == "bf16"
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
        return engine.predict(network, batches)


def same_accuracy(reloaded: float, logged: float, count: int) -> bool:
    """Equal to within half an example: the logged metric went through float32."""
    return abs(reloaded - logged) <= 0.5 / count


def per_class_table(labels: np.ndarray, predictions: np.ndarray, classes) -> str:
    rows = ["| class | examples | accuracy |", "|---|---|---|"]
    for index, name in enumerate(classes):
        mask = labels == index
        rows.append(f"| {name} | {mask.sum()} | {(predictions[mask] == index).mean():.4f} |")
    return "\n".join(rows) + "\n"


def write_report(folder: Path, labels: np.ndarray, predictions: np.ndarray, classes) -> None:
    from mlp_experiments import plots

    folder.mkdir(parents=True, exist_ok=True)
    figure = plots.confusion_matrix(labels, predictions, classes)
    figure.savefig(folder / "confusion_matrix.png", dpi=120)
    plots.plt.close(figure)
    (folder / "per_class_accuracy.md").write_text(per_class_table(labels, predictions, classes))


def evaluate(run_id: str, tracking_uri: str, out: Path) -> dict[str, float]:
    """Accuracy of the reloaded network against the run's logged test accuracy."""
    if not RUN_ID.fullmatch(run_id):  # answered before MLflow is imported (seconds)
        raise UserError(f"evaluate.run_id={run_id}: an MLflow run id is 32 hexadecimal digits "
                        f"(the MLflow UI shows it on the run page).")
    check_store(tracking_uri)
    import mlflow

    from mlp_experiments import data

    client = mlflow.MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        cfg = run_config(client, run_id, folder)
        dataset = data.load_dataset(cfg.data)
        if dataset.regression:
            raise UserError(f"Run {run_id} is a regression: there is no accuracy to reproduce.")
        network = build_network(cfg, dataset)
        load_weights(network, client, run_id, folder)
    predictions = predict_test_set(network, dataset, cfg)
    labels = dataset.test[1].numpy()
    write_report(out / run_id, labels, predictions, dataset.classes)
    logged = client.get_run(run_id).data.metrics.get("test_acc", float("nan"))
    return {"test_acc": float((predictions == labels).mean()), "logged_test_acc": logged,
            "test_examples": len(labels)}


def log_run_figures(tracking_uri: str, run_id: str, history: list[dict[str, float]]) -> None:
    """Draw a finished run's figures from its record (config.yaml, state dict and `history`,
    its metrics per epoch) and log them to it: those a run trained with tracking.plots=false
    lacks (a sweep draws them this way for its best trials only)."""
    import mlflow

    from mlp_experiments import data, plots, tracking

    client = mlflow.MlflowClient(tracking_uri)
    with tempfile.TemporaryDirectory() as folder:
        cfg = run_config(client, run_id, folder)
        dataset = data.load_dataset(cfg.data)
        network = build_network(cfg, dataset)
        load_weights(network, client, run_id, folder)
    predictions = None if dataset.regression else predict_test_set(network, dataset, cfg)
    plots.log_run_figures(client, run_id, tracking.figure_data(dataset, history, predictions))


def main(arguments: list[str] | None = None) -> None:
    # A second guard: should anything in this process load an MLflow model, MLflow refuses
    # the pickled ones.
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    register_configs()
    try:
        cfg, _ = cli.parse(COMMAND, sys.argv[1:] if arguments is None else arguments)
        run_id, out = cfg.evaluate.run_id, Path(cfg.evaluate.out_dir)
        check_folder(out, "evaluate.out_dir")
        result = evaluate(run_id, cfg.tracking.uri, out)
    except UserError as error:
        exit_on_mistake(error)
    agree = same_accuracy(result["test_acc"], result["logged_test_acc"], result["test_examples"])
    print(f"test accuracy of the reloaded model {result['test_acc']:.4f}, "
          f"{'the same as' if agree else 'NOT the same as'} the run's logged "
          f"{result['logged_test_acc']:.4f}; confusion matrix and per-class accuracy in "
          f"{out / run_id}")


if __name__ == "__main__":
    main()
