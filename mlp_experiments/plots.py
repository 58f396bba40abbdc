"""The figures the notes draw for a run: learning curves, confusion matrix, labelled test images."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def learning_curves(history: list[dict[str, float]]) -> Figure:
    epochs = np.arange(1, len(history) + 1)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "acc"), strict=True):
        for split in ("train", "val", "test"):
            axis.plot(epochs, [m[f"{split}_{metric}"] for m in history], marker="o", label=split)
        axis.set_xlabel("epoch")
        axis.set_ylabel("accuracy" if metric == "acc" else "loss (mean per example)")
        axis.set_title("Accuracy" if metric == "acc" else "Loss")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Row = true class, column = predicted class."""
    flat = labels.astype(np.int64) * num_classes + predictions
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, classes: tuple[str, ...]
) -> Figure:
    matrix = confusion_counts(labels, predictions, len(classes))
    figure, axis = plt.subplots(figsize=(7, 6))
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
    figure.tight_layout()
    return figure


def prediction_grid(
    images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, classes: tuple[str, ...]
) -> Figure:
    """Test images titled 'true / predicted' (red where wrong), like the notes' final figure."""
    columns = 8
    rows = int(np.ceil(len(images) / columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(columns * 1.5, rows * 1.9), squeeze=False,
        gridspec_kw={"hspace": 0.5, "top": 0.85, "bottom": 0.02, "left": 0.02, "right": 0.98},
    )
    for axis in axes.flat:
        axis.set_axis_off()
    for axis, image, label, prediction in zip(
        axes.flat, images, labels, predictions, strict=False
    ):
        axis.imshow(image, cmap="gray")
        color = "black" if label == prediction else "red"
        axis.set_title(f"{classes[label]}\n{classes[prediction]}", fontsize=8, color=color)
    figure.suptitle("Test images: true label / prediction")
    return figure
