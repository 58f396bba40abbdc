"""Logged models that real clients load: pyfunc probabilities, dataset inputs (evaluate:
test_evaluate.py)."""

import mlflow
import numpy as np
import pytest
import torch
from conftest import write_tiny_release
from mlflow import MlflowClient

from mlp_experiments.train import train


def only_run(tracking_uri, experiment):
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


@pytest.fixture
def logged_run(synthetic_cfg, tracking_uri, request):
    """A 2-epoch synthetic run whose model is logged."""
    result = train(synthetic_cfg("tracking.log_model=true", "trainer.epochs=2",
                                 "data.normalize=computed"))
    client, run = only_run(tracking_uri, request.node.name)
    return result, client, run


def test_pyfunc_predicts_class_probabilities_for_raw_images(logged_run, tracking_uri,
                                                             monkeypatch):
    _, _, run = logged_run
    mlflow.set_tracking_uri(tracking_uri)
    # As on a machine with a GPU, where MLflow's loader picks it: the model runs where its
    # exported weights are (on the lent H200 it failed to load before the model said cpu).
    monkeypatch.setenv("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cuda")
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.float32)
    probabilities = model.predict(images)
    assert probabilities.shape == (5, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5) and (probabilities >= 0).all()
    schema = model.metadata.get_input_schema().inputs[0]
    assert tuple(schema.shape) == (-1, 28, 28)
    assert model.metadata.saved_input_example_info is not None  # the UI shows an example


def test_each_split_is_logged_as_a_dataset_input(logged_run):
    _, _, run = logged_run
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation", "test"}
    assert inputs["training"].name == "synthetic-train" and len(inputs["training"].digest) == 16
    assert len({d.digest for d in inputs.values()}) == 3


def test_real_files_are_named_as_the_dataset_source(synthetic_cfg, tracking_uri, request,
                                                    tmp_path):
    write_tiny_release(tmp_path / "MNIST" / "raw", train=60, test=20)
    train(synthetic_cfg("data=mnist", f"data.root={tmp_path}", "data.verify=false",
                        "data.val_size=10"))
    _, run = only_run(tracking_uri, request.node.name)
    (test_input,) = [i for i in run.inputs.dataset_inputs if i.tags[0].value == "test"]
    assert str(tmp_path / "MNIST" / "raw") in test_input.dataset.source
    assert test_input.dataset.name == "mnist-test"


def test_binary_model_serves_two_class_probabilities(synthetic_cfg, tracking_uri, request):
    train(synthetic_cfg("data.num_classes=2", "loss=bce", "tracking.log_model=true"))
    _, run = only_run(tracking_uri, request.node.name)
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    probabilities = model.predict(np.zeros((3, 28, 28), dtype=np.float32))
    assert probabilities.shape == (3, 2)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-6)


def test_system_metrics_are_one_switch(synthetic_cfg, tracking_uri, request, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")

    client = MlflowClient(tracking_uri)

    def until_sampled(epoch, metrics):
        """Each epoch waits for the monitor's next sample in the store (seconds apart)."""
        import time

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the sender makes the run when it can
            runs = [run for e in client.search_experiments() if e.name == request.node.name
                    for run in client.search_runs([e.experiment_id])]
            cpu = [m for m in runs[0].data.metrics if m.startswith("system/cpu_utilization")] \
                if runs else []
            if cpu and len(client.get_metric_history(runs[0].info.run_id, cpu[0])) >= epoch:
                return
            time.sleep(0.2)

    train(synthetic_cfg("tracking.system_metrics=true"), hooks=(until_sampled,))
    _, run = only_run(tracking_uri, request.node.name)
    assert any(name.startswith("system/cpu_utilization") for name in run.data.metrics)
    assert any(name.startswith("system/system_memory_usage") for name in run.data.metrics)
    assert torch.cuda.is_available() or not any("gpu" in n for n in run.data.metrics)
