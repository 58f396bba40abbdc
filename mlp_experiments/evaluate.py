"""`python -m mlp_experiments.evaluate run_id=<id> [tracking.uri=...] [out=evaluation]`

Reloads a run's logged MLflow model through `mlflow.pyfunc`, predicts the test set the run was
trained against (rebuilt from the run's `config.yaml`), checks the accuracy against the one the
run logged, and writes a confusion matrix and a per-class accuracy table to `out/<run_id>/`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mlp_experiments.config import (
    SCHEMAS,
    DatasetName,
    TrackingConfig,
    UserError,
    register_configs,
)

DATA_SCHEMAS = {DatasetName.fashion_mnist: "idx", DatasetName.mnist: "idx",
                DatasetName.synthetic: "synthetic", DatasetName.regression: "regression"}


def parse_arguments(arguments: list[str]) -> dict[str, str]:
    values = dict(argument.split("=", 1) for argument in arguments if "=" in argument)
    unknown = set(values) - {"run_id", "tracking.uri", "out"}
    if "run_id" not in values or unknown:
        raise UserError(
            "usage: python -m mlp_experiments.evaluate run_id=<id> [tracking.uri=<uri>] "
            "[out=<folder>]" + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
        )
    return values


def run_config(client, run_id: str) -> DictConfig:
    """The run's resolved config, its data section typed again (enums, defaults)."""
    import mlflow

    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(
            f"No MLflow run {run_id} in {client.tracking_uri}: check the id (the MLflow UI "
            f"shows it on the run page) and tracking.uri."
        ) from None
    cfg = OmegaConf.load(client.download_artifacts(run.info.run_id, "config.yaml"))
    schema = SCHEMAS["data"][DATA_SCHEMAS[DatasetName(cfg.data.name)]]
    cfg.data = OmegaConf.merge(OmegaConf.structured(schema), cfg.data)
    return cfg


def load_served_model(run_id: str):
    import mlflow

    try:
        return mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    except (mlflow.exceptions.MlflowException, OSError):
        raise UserError(
            f"Run {run_id} has no logged model (it was trained with tracking.log_model=false, "
            f"or it did not finish): train again with tracking.log_model=true."
        ) from None


def predict(model, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's outputs for every input, in the run's batch size (so the arithmetic, and so
    the accuracy, is the run's own on CPU)."""
    import mlflow

    expected = model.metadata.get_input_schema().inputs[0].shape
    if tuple(expected[1:]) != inputs.shape[1:]:
        raise UserError(
            f"The model takes inputs of shape {tuple(expected)}, the data gives "
            f"{('-1', *inputs.shape[1:])}: evaluate it on the data it was trained for."
        )
    try:
        outputs = [model.predict(inputs[i : i + batch_size])
                   for i in range(0, len(inputs), batch_size)]
    except mlflow.exceptions.MlflowException as error:
        raise UserError(f"The model rejected the inputs: {error}") from None
    return np.concatenate(outputs)


def per_class_table(labels: np.ndarray, predictions: np.ndarray, classes) -> str:
    rows = ["| class | examples | accuracy |", "|---|---|---|"]
    for index, name in enumerate(classes):
        mask = labels == index
        rows.append(f"| {name} | {mask.sum()} | {(predictions[mask] == index).mean():.4f} |")
    return "\n".join(rows) + "\n"


def evaluate(run_id: str, tracking_uri: str, out: Path) -> dict[str, float]:
    """Accuracy of the reloaded model against the run's logged test accuracy."""
    import mlflow

    from mlp_experiments import data, plots

    client = mlflow.MlflowClient(tracking_uri)
    cfg = run_config(client, run_id)
    model = load_served_model(run_id)
    dataset = data.load_dataset(cfg.data)
    if dataset.regression:
        raise UserError(f"Run {run_id} is a regression: there is no accuracy to reproduce.")
    inputs, targets = dataset.test
    outputs = predict(model, inputs.numpy().astype(np.float32), cfg.trainer.batch_size)
    predictions, labels = outputs.argmax(axis=1), targets.numpy()
    accuracy = float((predictions == labels).mean())
    logged = client.get_run(run_id).data.metrics.get("test_acc", float("nan"))
    folder = out / run_id
    folder.mkdir(parents=True, exist_ok=True)
    figure = plots.confusion_matrix(labels, predictions, dataset.classes)
    figure.savefig(folder / "confusion_matrix.png", dpi=120)
    plots.plt.close(figure)
    (folder / "per_class_accuracy.md").write_text(
        per_class_table(labels, predictions, dataset.classes)
    )
    return {"test_acc": accuracy, "logged_test_acc": logged}


def main(arguments: list[str] | None = None) -> None:
    register_configs()
    try:
        values = parse_arguments(sys.argv[1:] if arguments is None else arguments)
        uri = (values.get("tracking.uri") or os.environ.get("MLFLOW_TRACKING_URI")
               or TrackingConfig.uri)
        out = Path(values.get("out", "evaluation"))
        result = evaluate(values["run_id"], uri, out)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    same = "the same as" if result["test_acc"] == result["logged_test_acc"] else "NOT the same as"
    print(f"test accuracy of the reloaded model {result['test_acc']:.4f}, {same} the run's "
          f"logged {result['logged_test_acc']:.4f}; confusion matrix and per-class accuracy in "
          f"{out / values['run_id']}")


if __name__ == "__main__":
    main()
