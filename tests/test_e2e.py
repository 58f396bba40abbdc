"""Reproduce the notes' results on the real FashionMNIST (seconds each with the device loader)."""

import pytest
from conftest import FASHION_DIR
from mlflow import MlflowClient

from mlp_experiments.config import compose_config
from mlp_experiments.train import train

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist"),
]


def test_concise_mlp_reaches_the_notes_accuracy(workdir, tracking_uri):
    # note 000: 784-256-10, N(0, 0.01), SGD lr 0.5, batch 256, 5 epochs -> test 0.836
    cfg = compose_config([
        "trainer.device=cpu", f"tracking.uri={tracking_uri}", "tracking.experiment=e2e",
    ])
    assert (cfg.optimizer.lr, cfg.trainer.batch_size, cfg.trainer.epochs) == (0.5, 256, 5)
    result = train(cfg)
    assert result.outcome == "completed"
    assert result.history[-1]["test_acc"] >= 0.82
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.data.metrics["test_acc"] == result.history[-1]["test_acc"]
