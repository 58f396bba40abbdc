"""Reproduce the notes' results on the real FashionMNIST (seconds each with the device loader),
and check that the MNIST presets (data from `mlp-fetch`'s cache folder) are on course for theirs
after 2 of their 10 epochs: the whole budget, minutes for the CNN on a CPU, is
benchmarks/reproduce_notes.py's."""

import json

import pytest
from conftest import FASHION_DIR
from mlflow import MlflowClient

from mlp_experiments import data
from mlp_experiments.config.compose import compose_config
from mlp_experiments.train import train

MNIST_CACHE = data.cache_dir() / data.SOURCES["mnist"].folder

pytestmark = pytest.mark.e2e
needs_fashion_mnist = pytest.mark.skipif(not FASHION_DIR.is_dir(),
                                         reason="apt-get install dataset-fashion-mnist")
needs_mnist = pytest.mark.skipif(
    data.find_files(data.SOURCES["mnist"], MNIST_CACHE) is None,
    reason=f"MNIST is not in {MNIST_CACHE}: uv run mlp-fetch fetch.dataset=mnist",
)


@needs_fashion_mnist
def test_the_default_experiment_is_the_concise_mlp_and_reaches_the_notes_accuracy(
    workdir, tracking_uri, caplog
):
    # note 000: 784-256-10, N(0, 0.01), SGD lr 0.5, batch 256, 5 epochs -> test 0.836; the
    # preset fashion_concise_mlp is this config, trained here once for both
    overrides = ["trainer.device=cpu", f"tracking.uri={tracking_uri}", "tracking.experiment=e2e"]
    cfg = compose_config(overrides)
    assert cfg == compose_config(["experiment=fashion_concise_mlp", *overrides])
    assert (cfg.optimizer.lr, cfg.trainer.batch_size, cfg.trainer.epochs) == (0.5, 256, 5)
    with caplog.at_level("INFO", logger="mlp_experiments"):
        result = train(cfg)
    assert result.outcome == "completed"
    assert result.history[-1]["test_acc"] >= 0.82
    # Which files it trained on, said in the log and recorded with the run.
    assert (f"data: fashion_mnist from {FASHION_DIR} (55000 train, 5000 validation, 10000 test "
            f"examples)") in caplog.text
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("e2e").experiment_id])
    assert run.data.metrics["test_acc"] == result.history[-1]["test_acc"]
    assert {json.loads(i.dataset.source)["uri"] for i in run.inputs.dataset_inputs} == {
        str(FASHION_DIR)}


@needs_fashion_mnist
@pytest.mark.parametrize(
    ("preset", "epochs", "minimum"),
    [
        ("fashion_scratch_mlp", 5, 0.81),  # the note reports 0.832
        ("fashion_d2l_mlp", 10, 0.83),  # about 0.85 in the d2l book
        ("fashion_dropout_mlp", 10, 0.84),  # curves only in the note
    ],
)
def test_fashion_presets_reproduce_the_notes(preset, epochs, minimum, synthetic_cfg):
    cfg = synthetic_cfg(preset=preset)
    assert cfg.data.name == "fashion_mnist" and cfg.trainer.epochs == epochs
    result = train(cfg)
    assert len(result.history) == epochs
    assert result.history[-1]["test_acc"] >= minimum


@needs_fashion_mnist
def test_bce_on_two_fashion_mnist_classes(synthetic_cfg):
    cfg = synthetic_cfg("data=fashion_mnist", "data.classes=[0,6]", "loss=bce",
                        "trainer.epochs=2", "data.val_size=1000", tracking=False)
    result = train(cfg)
    assert result.history[-1]["test_acc"] > 0.75  # t-shirt vs shirt, the hardest pair


@needs_mnist
@pytest.mark.parametrize(
    ("preset", "minimum"),
    [  # after 2 of their 10 epochs (measured: 0.9736, 0.9726, 0.9859); the whole 10 epochs
       # reach the notes' results (benchmarks/reproduce_notes.py, docs/notes.md)
        ("mnist_wide_mlp", 0.965),  # note 002 reports 0.9801 after 10 epochs
        ("mnist_deep_mlp", 0.965),  # note 003: about 0.97
        ("mnist_cnn", 0.980),  # note 003: about 0.98
    ],
)
def test_mnist_presets_are_on_course_for_the_notes(preset, minimum, synthetic_cfg):
    cfg = synthetic_cfg("trainer.epochs=2", preset=preset)
    assert cfg.data.name == "mnist"
    assert data.load_dataset(cfg.data).source == str(MNIST_CACHE)  # data.root (./data) is empty
    assert compose_config([f"experiment={preset}"]).trainer.epochs == 10  # the notes' budget
    result = train(cfg)
    assert len(result.history) == 2
    assert result.history[-1]["test_acc"] >= minimum
