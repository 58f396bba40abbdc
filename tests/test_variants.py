"""The notes' worked examples and central claims, through the platform's own factories."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_release
from hydra.utils import instantiate

from mlp_experiments import data, engine, losses, models, optim
from mlp_experiments.batches import DeviceBatches, make_batches
from mlp_experiments.config.compose import check_overrides, compose_config
from mlp_experiments.errors import UserError
from mlp_experiments.task import Task
from mlp_experiments.train import train


def build_loss(name: str, *overrides: str):
    return instantiate(compose_config([f"loss={name}", *overrides]).loss)


def np_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_cross_entropy(logits, labels):
    probabilities = np_softmax(logits)
    return -np.log(probabilities[np.arange(len(labels)), labels])


# ---------------------------------------------------------------------------- losses (001, 003)

CE_EXAMPLES = [  # the notes' three CrossEntropyLoss examples
    ([1, 2], [[0.1, 0.8, 0.1], [0.7, 0.2, 0.1]], "sum"),
    ([0], [[0.2, 0.1, -0.1]], "mean"),
    ([2, 0, 1], [[0.1, 0.2, 0.9], [1.1, 0.1, 0.2], [0.2, 2.1, 0.1]], "mean"),
]


@pytest.mark.parametrize(("labels", "logits", "reduction"), CE_EXAMPLES)
def test_cross_entropy_examples(labels, logits, reduction):
    loss = build_loss("cross_entropy", f"loss.reduction={reduction}")
    value = loss(torch.tensor(logits), torch.tensor(labels)).item()
    per_example = np_cross_entropy(logits, labels)
    expected = per_example.sum() if reduction == "sum" else per_example.mean()
    assert value == pytest.approx(expected, rel=1e-6)


def test_nll_after_log_softmax_is_the_numpy_one_hot_formula():
    z, y = np.array([0.2, 0.1, -0.1]), np.array([1, 0, 0])
    expected = -(y * np.log(np_softmax(z))).sum()
    value = build_loss("nll")(torch.tensor([z.tolist()]), torch.tensor([0])).item()
    assert value == pytest.approx(expected, rel=1e-6)


def test_bce_on_sigmoid_outputs():
    y, p = np.array([0.0, 1.0, 0.0]), np.array([0.6901, 0.5459, 0.2469])
    expected = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    logits = torch.tensor(np.log(p / (1 - p)), dtype=torch.float32).unsqueeze(1)
    assert build_loss("bce")(logits, torch.tensor(y)).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("name", "formula"),
    [
        ("l1", lambda d: np.abs(d).mean()),
        ("mse", lambda d: (d**2).mean()),
        ("smooth_l1", lambda d: np.where(np.abs(d) < 1, 0.5 * d**2, np.abs(d) - 0.5).mean()),
    ],
)
def test_regression_losses(name, formula):
    y, prediction = np.array([1.2, 1.5, 2.0]), np.array([1.3, 1.7, 2.0])
    loss = build_loss(name)
    value = loss(torch.tensor(prediction), torch.tensor(y)).item()
    assert value == pytest.approx(formula(prediction - y), rel=1e-6)


def test_one_hot_mse_and_scratch_cross_entropy():
    logits = np.array(CE_EXAMPLES[2][1])
    labels = np.array(CE_EXAMPLES[2][0])
    probabilities = np_softmax(logits)
    one_hot = np.eye(3)[labels]
    expected_mse = ((probabilities - one_hot) ** 2).sum(axis=1).mean()
    mse = build_loss("mse_onehot")(torch.tensor(logits), torch.tensor(labels)).item()
    assert mse == pytest.approx(expected_mse, rel=1e-6)
    scratch = build_loss("scratch_cross_entropy")  # summed, on probabilities
    value = scratch(torch.tensor(probabilities), torch.tensor(labels)).item()
    assert value == pytest.approx(np_cross_entropy(logits, labels).sum(), rel=1e-6)


# ---------------------------------------------------------------------------- optimizers (001)


def hand_trajectory(name: str, steps: int, lr: float = 0.01) -> list[float]:
    """w = 1, loss = w^2 / 2 (gradient w), updated by each optimizer's textbook formula."""
    w, state, trajectory = 1.0, {"b": 0.0, "s": 0.0, "m": 0.0, "v": 0.0}, []
    for t in range(1, steps + 1):
        g = w
        if name in ("sgd", "scratch_sgd"):
            w -= lr * g
        elif name == "momentum":
            state["b"] = 0.9 * state["b"] + g if t > 1 else g
            w -= lr * state["b"]
        elif name == "adagrad":
            state["s"] += g * g
            w -= lr * g / (math.sqrt(state["s"]) + 1e-10)
        elif name == "rmsprop":
            state["s"] = 0.9 * state["s"] + 0.1 * g * g
            w -= lr * g / (math.sqrt(state["s"]) + 1e-8)
        elif name in ("adam", "adamw"):
            state["m"] = 0.9 * state["m"] + 0.1 * g
            state["v"] = 0.99 * state["v"] + 0.01 * g * g
            m_hat, v_hat = state["m"] / (1 - 0.9**t), state["v"] / (1 - 0.99**t)
            w -= lr * m_hat / (math.sqrt(v_hat) + 1e-8)
        trajectory.append(w)
    return trajectory


class OneWeight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([1.0]))


@pytest.mark.parametrize(
    "name", ["scratch_sgd", "sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"]
)
def test_optimizer_trajectories_of_note_001(name):
    overrides = [f"optimizer={name}", "optimizer.lr=0.01"]
    if name in ("adam", "adamw"):
        overrides.append("optimizer.betas=[0.9,0.99]")
    if name == "scratch_sgd":
        overrides.append("trainer.batch_size=1")
    cfg = compose_config(overrides)
    model = OneWeight()
    optimizer = optim.build_optimizer(cfg.optimizer, cfg.regularization, model)
    trajectory = []
    for _ in range(3):
        optimizer.zero_grad()
        (model.w**2 / 2).sum().backward()
        optimizer.step()
        trajectory.append(model.w.item())
    assert trajectory == pytest.approx(hand_trajectory(name, 3), rel=1e-6)


# ---------------------------------------------------------------------------- models


def test_model_demo_has_26_parameters_and_outputs_probabilities():
    torch.manual_seed(0)
    model = instantiate(compose_config(["model=model_demo"]).model, in_features=3, num_outputs=2)
    assert models.count_parameters(model) == 26
    assert "**26**" in models.parameter_table(model)
    assert torch.count_nonzero(model.linear1.bias) == 0
    assert torch.count_nonzero(model.linear2.bias) == 0
    output = model(torch.randn(5, 3))
    assert output.shape == (5, 2) and torch.allclose(output.sum(dim=1), torch.ones(5))
    with pytest.raises(UserError, match="3 inputs -> 2 outputs"):
        models.ModelDemo(784, 10)


def test_cnn_and_scratch_mlp_shapes():
    cnn = instantiate(compose_config(["model=cnn"]).model, in_features=784, num_outputs=10)
    assert models.count_parameters(cnn) == 260 + 5020 + 3210
    assert cnn(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    scratch = models.ScratchMLP(784, 10, hidden_sizes=[256])
    assert models.count_parameters(scratch) == 203_530
    assert torch.allclose(scratch(torch.rand(4, 1, 28, 28)).sum(dim=1), torch.ones(4))


@pytest.mark.parametrize("activation", list(models.ACTIVATIONS))
def test_every_activation_builds_a_working_mlp(activation):
    model = models.MLP(784, 10, hidden_sizes=[8], activation=activation)
    assert isinstance(model[2], models.ACTIVATIONS[activation])
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("init", ["xavier_normal", "xavier_uniform", "kaiming_normal",
                                  "kaiming_uniform"])
def test_weight_inits_have_their_variance(init):
    torch.manual_seed(0)
    layer = models.MLP(400, 10, hidden_sizes=[300], init=init, bias_init="zeros")[1]
    fan_in, fan_out = 400, 300
    expected = 2 / (fan_in + fan_out) if init.startswith("xavier") else 2 / fan_in
    assert layer.weight.var().item() == pytest.approx(expected, rel=0.05)
    assert torch.count_nonzero(layer.bias) == 0


def test_scratch_dropout_is_identity_in_eval_and_keeps_the_expectation_in_training():
    torch.manual_seed(0)
    dropout = models.ScratchDropout(0.3)
    x = torch.ones(200_000)
    dropout.eval()
    assert torch.equal(dropout(x), x)
    dropout.train()
    y = dropout(x)
    assert (y == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.unique(y).tolist() == pytest.approx([0.0, 1 / 0.7])


def test_per_layer_dropout_rates_and_implementation():
    model = models.MLP(784, 10, hidden_sizes=[256, 256], dropout=[0.2, 0.5],
                       dropout_impl="scratch")
    assert [m.p for m in model if isinstance(m, models.ScratchDropout)] == [0.2, 0.5]
    with pytest.raises(UserError, match="one per hidden layer"):
        models.MLP(784, 10, hidden_sizes=[256, 256], dropout=[0.2])


# ---------------------------------------------------------------------------- equivalences


def test_scratch_and_concise_training_end_with_the_same_parameters(workdir):
    """Note 000's point: hand-written MLP + SGD on a summed loss (grad / batch size) is the
    concise MLP + torch SGD on the mean loss, step for step."""
    dataset = data.load_dataset(compose_config(
        ["data=synthetic", "data.train_size=1000", "data.val_size=200"]).data)
    batches = {split: make_batches(dataset, split, 100, torch.device("cpu"), "device")
               for split in ("train", "val", "test")}
    torch.manual_seed(0)
    scratch = models.ScratchMLP(784, 10, hidden_sizes=[32])
    concise = models.MLP(784, 10, hidden_sizes=[32])
    with torch.no_grad():
        for layer, weight, bias in zip([concise[1], concise[3]], scratch.weights, scratch.biases,
                                       strict=True):
            layer.weight.copy_(weight.T)
            layer.bias.copy_(bias)
    settings = engine.FitSettings(epochs=2, seed=0)
    scoring = losses.Scoring(Task(regression=False, num_classes=10))
    runs = [
        (scratch, "scratch_cross_entropy", optim.ScratchSGD(scratch.parameters(), lr=0.1,
                                                           batch_size=100)),
        (concise, "cross_entropy", torch.optim.SGD(concise.parameters(), lr=0.1)),
    ]
    histories = []
    for model, loss, optimizer in runs:
        objective = engine.Objective(build_loss(loss), scoring)
        histories.append(engine.fit(model, objective, optimizer, None, batches, settings).history)
    for weight, bias, layer in zip(scratch.weights, scratch.biases, [concise[1], concise[3]],
                                   strict=True):
        assert torch.allclose(weight.T, layer.weight, atol=1e-6)
        assert torch.allclose(bias, layer.bias, atol=1e-6)
    assert histories[0][-1]["train_loss"] == pytest.approx(histories[1][-1]["train_loss"], rel=1e-5)


def test_explicit_l2_penalty_and_weight_decay_give_the_same_sgd_step():
    torch.manual_seed(0)
    first = models.MLP(784, 10, hidden_sizes=[16])
    second = models.MLP(784, 10, hidden_sizes=[16])
    second.load_state_dict(first.state_dict())
    inputs, labels = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    loss_fn = torch.nn.CrossEntropyLoss()
    scoring = losses.Scoring(Task(regression=False, num_classes=10))
    decay = compose_config(["regularization=weight_decay",
                            "regularization.weight_decay=0.01"]).regularization
    penalty = compose_config(["regularization=l2_penalty",
                              "regularization.l2_penalty=0.01"]).regularization
    steps = [
        (first, optim.parameter_groups(first, decay.weight_decay, decay.decay_biases), None),
        (second, optim.parameter_groups(second, 0.0, False),
         lambda: losses.weight_penalty(second, penalty.l2_penalty, 0.0, False)),
    ]
    for model, groups, weight_penalty in steps:
        optimizer = torch.optim.SGD(groups, lr=0.1)
        objective = engine.Objective(loss_fn, scoring, weight_penalty)
        loss = loss_fn(model(inputs), labels) + objective.penalty_term(len(labels))
        loss.backward()
        optimizer.step()
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-7)


def test_l1_penalty_is_lambda_times_the_absolute_weights():
    model = models.MLP(4, 2, hidden_sizes=[3])
    weights = [p for p in model.parameters() if p.ndim > 1]
    expected = 0.5 * sum(w.abs().sum() for w in weights)
    assert losses.weight_penalty(model, 0.0, 0.5, False).item() == pytest.approx(expected.item())


# ---------------------------------------------------------------------------- data variants


def test_normalisation_choices():
    images = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    cfg = compose_config(["data.normalize=computed"]).data
    mean, std = data.normalization(cfg, images)
    pixels = images.numpy() / 255
    assert mean == pytest.approx(pixels.mean(), rel=1e-5)
    assert std == pytest.approx(pixels.std(ddof=1), rel=1e-4)
    assert data.normalization(compose_config(["data.normalize=mnist"]).data, images) == (
        0.1307, 0.3081)
    batches = DeviceBatches(images, torch.zeros(50), 50, torch.device("cpu"), False,
                                 (mean, std))
    (normalised, _), = batches.epoch(0, 0)
    assert normalised.mean().item() == pytest.approx(0.0, abs=1e-5)


def test_two_classes_are_kept_and_relabelled():
    labels = torch.tensor([0, 6, 3, 6, 0, 9])
    inputs, kept = data.select_classes((torch.arange(6), labels), [6, 0], num_classes=10)
    assert inputs.tolist() == [0, 1, 3, 4] and kept.tolist() == [1, 0, 0, 1]
    with pytest.raises(UserError, match="distinct classes"):
        data.select_classes((torch.arange(6), labels), [6, 6], num_classes=10)


def test_regression_data_trains_an_mlp_regressor_scored_by_mae_and_rmse(synthetic_cfg):
    cfg = synthetic_cfg("data=regression", "loss=mse", "trainer.epochs=3", "optimizer=adam",
                        "optimizer.lr=0.01", "trainer.batch_size=64", tracking=False)
    result = train(cfg)
    metrics = result.history[-1]
    assert {"val_mae", "val_rmse", "test_rmse"} <= set(metrics) and "val_acc" not in metrics
    assert metrics["val_rmse"] < result.history[0]["val_rmse"]
    assert metrics["val_rmse"] < 4.0  # the target's own spread is about 5


def test_binary_task_with_bce_and_one_output(synthetic_cfg):
    cfg = synthetic_cfg("data.num_classes=2", "loss=bce", "trainer.epochs=2", tracking=False)
    result = train(cfg)
    assert result.history[-1]["val_acc"] > 0.9


def test_mnist_presets_run_end_to_end_on_tiny_idx_files(tmp_path, synthetic_cfg, tracking_uri):
    write_tiny_release(tmp_path / "MNIST" / "raw", train=200, test=50)
    for preset in ("mnist_wide_mlp", "mnist_deep_mlp", "mnist_cnn"):
        cfg = synthetic_cfg(f"data.root={tmp_path}", "data.verify=false", "data.val_size=40",
                            "trainer.epochs=2", preset=preset)
        assert cfg.data.name == "mnist" and cfg.trainer.epochs == 2
        result = train(cfg)
        assert result.outcome == "completed"
        assert result.history[-1]["test_acc"] > 0.2  # ten classes, learnable stripes


def test_model_demo_preset_trains_and_records_26_parameters(synthetic_cfg, tracking_uri,
                                                            request):
    from mlflow import MlflowClient

    result = train(synthetic_cfg(preset="model_demo"))
    assert result.history[-1]["val_acc"] > 0.8
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(request.node.name).experiment_id])
    table = Path(client.download_artifacts(run.info.run_id, "parameters.md"))
    assert "**26**" in table.read_text()


# ---------------------------------------------------------------------------- bad combinations


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss=bce"], "loss=bce is for two classes, but data=fashion_mnist has 10"),
        (["data=regression"], "scores class labels (accuracy), but data=regression"),
        (["loss=mse"], "compares real values, but data=fashion_mnist has class labels"),
        (["model=cnn", "data=regression", "loss=mse"], "model=cnn needs 28x28 images"),
        (["model=scratch_mlp"], "outputs probabilities but loss=cross_entropy takes logits"),
        (["loss=scratch_cross_entropy"], "outputs logits but loss=scratch_cross_entropy"),
    ],
)
def test_incompatible_combinations_fail_before_training(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        check_overrides(overrides)


def test_every_preset_composes_and_is_documented():
    from mlp_experiments.config.compose import CONF_DIR

    presets = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")
                     if not p.stem.endswith("_best"))  # those a sweep wrote
    assert presets == sorted([
        "fashion_scratch_mlp", "fashion_concise_mlp", "fashion_d2l_mlp", "fashion_dropout_mlp",
        "mnist_wide_mlp", "mnist_deep_mlp", "mnist_cnn", "model_demo",
    ])
    for preset in presets:
        text = (CONF_DIR / "experiment" / f"{preset}.yaml").read_text()
        assert "Note 00" in text and ("reports" in text or "shows" in text)
        check_overrides([f"experiment={preset}"])
