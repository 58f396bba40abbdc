"""The figures the notes draw for a run: learning curves, confusion matrix, labelled test images.

`mlp-plots plots.figure=activations` draws a figure that needs no run: `activations` (every
activation with its derivative) or `schedules` (learning rate per epoch of each
`conf/scheduler/` option), to `<plots.out_dir>/<figure>.png`.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import enum  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from omegaconf import MISSING  # noqa: E402

from mlp_experiments import cli
from mlp_experiments.cli import described
from mlp_experiments.errors import UserError, exit_on_mistake
from mlp_experiments.stores import check_folder

if TYPE_CHECKING:  # a run's figures need no torch: the sender process never imports it
    import torch
    from torch import nn

METRIC_LABELS = {"loss": "loss (mean per example)", "acc": "accuracy", "rmse": "RMSE"}


def learning_curves(history: list[dict[str, float]]) -> Figure:
    """Loss and accuracy (RMSE for regression) of train, val and test against the epoch."""
    epochs = np.arange(1, len(history) + 1)
    score = "acc" if "train_acc" in history[0] else "rmse"
    # Fixed margins, not tight_layout: the labels are ours and short, and measuring them cost
    # a tenth of a second of every tracked run's end.
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw=dict(
        left=0.08, right=0.98, bottom=0.13, top=0.92, wspace=0.25))
    for axis, metric in zip(axes, ("loss", score), strict=True):
        for split in ("train", "val", "test"):
            axis.plot(epochs, [m[f"{split}_{metric}"] for m in history], marker="o", label=split)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel(METRIC_LABELS[metric])
        axis.set_title(METRIC_LABELS[metric].split(" ")[0].capitalize())
        axis.grid(alpha=0.3)
        axis.legend()
    return figure


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Row = true class, column = predicted class."""
    flat = labels.astype(np.int64) * num_classes + predictions
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, classes: tuple[str, ...]
) -> Figure:
    matrix = confusion_counts(labels, predictions, len(classes))
    figure, axis = plt.subplots(figsize=(7, 6), gridspec_kw=dict(
        left=0.17, right=0.98, bottom=0.2, top=0.94))
    image = axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"Confusion matrix (test, accuracy {np.trace(matrix) / matrix.sum():.4f})")
    threshold = matrix.max() / 2
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if count > threshold else "black"
        axis.text(column, row, int(count), ha="center", va="center", fontsize=7, color=color)
    figure.colorbar(image, ax=axis)
    return figure


def prediction_grid(
    images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, classes: tuple[str, ...]
) -> Figure:
    """Test images titled 'true / predicted' (red where wrong), like the notes' final figure:
    one mosaic in one axes (an axes per image cost a third of a second to build)."""
    columns, gap, side = 8, 20, images.shape[1]  # gap: pixels between tiles, room for a title
    rows = int(np.ceil(len(images) / columns))
    mosaic = np.full((rows * (side + gap), columns * (side + 4)), np.nan)
    for index, image in enumerate(images):
        top, left = (index // columns) * (side + gap) + gap, (index % columns) * (side + 4)
        mosaic[top : top + side, left : left + side] = image
    figure = plt.figure(figsize=(columns * 1.2, rows * 1.6 + 0.4))
    axis = figure.add_axes((0.01, 0.01, 0.98, 0.9))
    axis.set_axis_off()
    axis.imshow(np.ma.masked_invalid(mosaic), cmap="gray", vmin=0, vmax=255,
                interpolation="nearest")
    for index, (label, prediction) in enumerate(zip(labels, predictions, strict=False)):
        x = (index % columns) * (side + 4) + side / 2
        y = (index // columns) * (side + gap) + gap - 2
        axis.text(x, y, f"{classes[label]}\n{classes[prediction]}", ha="center", va="bottom",
                  fontsize=8, color="black" if label == prediction else "red")
    figure.suptitle("Test images: true label / prediction")
    return figure


def log_run_figures(client, run_id: str, data: dict) -> None:
    """Log a run's figures to its MLflow run (`client`: an MlflowClient) under plots/."""
    for path, figure in run_figures(data).items():
        client.log_figure(run_id, figure, path)
        plt.close(figure)


def run_figures(data: dict) -> dict[str, Figure]:
    """A run's figures by their artifact path, from tracking.figure_data's `data`: learning
    curves, and for a classifier the confusion matrix and (for images) 16 test images."""
    figures = {"plots/learning_curves.png": learning_curves(data["history"])}
    if data["predictions"] is not None:
        labels, predicted = np.asarray(data["test_labels"]), np.asarray(data["predictions"])
        classes = tuple(data["classes"])
        figures["plots/confusion_matrix.png"] = confusion_matrix(labels, predicted, classes)
        if data["test_images"] is not None:
            figures["plots/predictions.png"] = prediction_grid(
                np.asarray(data["test_images"], dtype=np.uint8), labels[:16], predicted[:16],
                classes)
    return figures


def activation_curve(module: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """f(x) and f'(x) of an elementwise activation, the derivative by autograd."""
    import torch

    x = x.detach().requires_grad_()
    y = module(x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    return y.detach().numpy(), dy.numpy()


def activations_figure() -> Figure:
    """One panel per entry of models.ACTIVATIONS, then the step function the notes show."""
    import torch

    from mlp_experiments.models import ACTIVATIONS

    x = torch.linspace(-6, 6, 601)
    panels = len(ACTIVATIONS) + 1
    columns = 3
    rows = int(np.ceil(panels / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 4, rows * 3.2), squeeze=False)
    for axis, (name, module_class) in zip(axes.flat, ACTIVATIONS.items(), strict=False):
        y, dy = activation_curve(module_class(), x)
        axis.plot(x, y, label="f(x)")
        axis.plot(x, dy, linestyle="--", label="f'(x)")
        axis.set_title(name)
        axis.legend()
    step_axis = axes.flat[len(ACTIVATIONS)]
    step_axis.plot(x, (x > 0).float(), label="f(x)")
    step_axis.set_title("step 1[x>0] (no useful gradient)")
    step_axis.legend()
    for axis in axes.flat[:panels]:
        axis.set_xlabel("x")
        axis.set_ylabel("value")
        axis.grid(alpha=0.3)
    for axis in axes.flat[panels:]:
        axis.set_visible(False)
    figure.tight_layout()
    return figure


def scheduler_names() -> list[str]:
    from mlp_experiments.config.compose import CONF_DIR  # Hydra: not for a sender's figures

    return sorted(path.stem for path in (CONF_DIR / "scheduler").glob("*.yaml"))


def learning_rates(scheduler_name: str, epochs: int) -> list[float]:
    """The rate of each epoch for SGD lr 0.1 momentum 0.9, 10 iterations per epoch (note 001)."""
    import torch
    from torch import nn

    from mlp_experiments.config.compose import compose_config
    from mlp_experiments.optim import build_scheduler

    cfg = compose_config([f"scheduler={scheduler_name}", f"trainer.epochs={epochs}"])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    scheduler = build_scheduler(cfg.scheduler, optimizer)
    rates = []
    for _ in range(epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        for _ in range(10):
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return rates


def schedules_figure(epochs: int) -> Figure:
    figure, axis = plt.subplots(figsize=(8, 5))
    # Several schedules coincide over whole stretches (step and multistep until epoch 150):
    # each line is thinner than the ones under it, so every one stays visible.
    names = scheduler_names()
    styles = ["-", "--", "-.", ":"]
    for index, name in enumerate(names):
        axis.plot(
            range(epochs), learning_rates(name, epochs), styles[index % len(styles)],
            linewidth=1.5 + 0.75 * (len(names) - 1 - index), label=name,
        )
    axis.set_title(f"Learning rate per epoch of each scheduler (SGD lr 0.1, {epochs} epochs)")
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel("learning rate")
    axis.grid(alpha=0.3)
    axis.legend(title="scheduler")
    figure.tight_layout()
    return figure


class FigureName(enum.Enum):
    activations = "activations"
    schedules = "schedules"


@dataclass
class PlotsSettings:
    figure: FigureName = described(MISSING, "activations (each with its derivative) or "
                                            "schedules (learning rate per epoch per scheduler)")
    out_dir: str = described("figures", "writes OUT_DIR/<figure>.png")
    epochs: int = described(200, "the epochs the schedules figure spans")


@dataclass
class PlotsKeys:
    plots: PlotsSettings = field(default_factory=PlotsSettings)


COMMAND = cli.Command(
    "plots", "Draw a figure that needs no run: the activations or the learning-rate schedules.",
    PlotsKeys,
)


def main(arguments: list[str] | None = None) -> None:
    try:
        cfg, _ = cli.parse(COMMAND, sys.argv[1:] if arguments is None else arguments)
        if cfg.plots.epochs < 1:
            raise UserError(f"plots.epochs={cfg.plots.epochs} must be at least 1.")
        check_folder(cfg.plots.out_dir, "plots.out_dir")
    except UserError as error:
        exit_on_mistake(error)
    name = cfg.plots.figure.value
    figure = activations_figure() if name == "activations" else schedules_figure(cfg.plots.epochs)
    out = Path(cfg.plots.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(path)


if __name__ == "__main__":
    main()
