"""Epoch throughput of the concise MLP (batch 256) on FashionMNIST, measured side by side.

    uv run python benchmarks/epoch_throughput.py [--repeats 3] [--device auto]

(a) the notes' loop: torch DataLoader over PIL images + ToTensor (num_workers 0 and the notes' 4)
(b) our engine: one training epoch of `engine.fit` on device-resident uint8 batches
(c) the compute-only bound: the same model and batch shapes, float batches already in memory
(d) (b) with trainer.deterministic=true: torch's deterministic algorithms (docs/rerun.md)
Runs are taken in alternation so machine drift hits every variant alike; each ratio is given
as the median of the per-repeat ratios and as the ratio of the fastest runs (the least disturbed
by other load on a shared machine). What a whole process costs, tracked or not, is
benchmarks/process_costs.py.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mlp_experiments import data, engine
from mlp_experiments.batches import ImageDataset, make_batches
from mlp_experiments.config.compose import compose_config
from mlp_experiments.losses import Scoring
from mlp_experiments.models import MLP
from mlp_experiments.task import Task


def concise_model(device):
    torch.manual_seed(0)
    return MLP(784, 10, hidden_sizes=[256], init="normal").to(device)


def step(model, optimizer, loss_fn, images, labels):
    loss = loss_fn(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def notes_epoch(dataset, device, num_workers: int) -> float:
    """(a) The notes' loop: DataLoader(shuffle=True) over PIL images through ToTensor."""
    model = concise_model(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = torch.nn.CrossEntropyLoss()
    loader = torch.utils.data.DataLoader(
        ImageDataset(*dataset.train), batch_size=256, shuffle=True, num_workers=num_workers
    )
    started = time.perf_counter()
    for images, labels in loader:
        step(model, optimizer, loss_fn, images.to(device), labels.to(device))
    return time.perf_counter() - started


def engine_epoch(dataset, device, deterministic: bool = False) -> float:
    """(b) One training epoch of our engine (its own timing of the training pass); (d) with
    deterministic algorithms."""
    engine.use_deterministic_algorithms(deterministic)
    model = concise_model(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batches = {split: make_batches(dataset, split, 256, device, "device")
               for split in ("train", "val", "test")}
    scoring = Scoring(Task(regression=False, num_classes=10))
    objective = engine.Objective(torch.nn.CrossEntropyLoss(), scoring)
    result = engine.fit(model, objective, optimizer, None, batches,
                        engine.FitSettings(epochs=1, seed=0))
    engine.use_deterministic_algorithms(False)
    return batches["train"].num_examples / result.history[0]["samples_per_s"]


def compute_bound_epoch(dataset, device) -> float:
    """(c) Same model and batch shapes, batches prepared beforehand: nothing but compute."""
    model = concise_model(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = torch.nn.CrossEntropyLoss()
    images, labels = dataset.train
    prepared = [
        (images[i : i + 256].unsqueeze(1).div(255).to(device), labels[i : i + 256].to(device))
        for i in range(0, len(labels), 256)
    ]
    synchronize(device)
    started = time.perf_counter()
    for batch_images, batch_labels in prepared:
        step(model, optimizer, loss_fn, batch_images, batch_labels)
    synchronize(device)
    return time.perf_counter() - started


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def report_ratio(name: str, numerator: list[float], denominator: list[float], target: str):
    paired = statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))
    print(f"{name:34s} = {paired:6.3f} (median of pairs), {min(numerator) / min(denominator):6.3f} "
          f"(fastest runs)  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = engine.pick_device(args.device)
    dataset = data.load_dataset(compose_config().data)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{dataset.train[1].numel()} training images, batch 256, median of {args.repeats}")

    timings = {"a0": [], "a4": [], "b": [], "c": [], "d": []}
    for _ in range(args.repeats):
        timings["a0"].append(notes_epoch(dataset, device, num_workers=0))
        timings["a4"].append(notes_epoch(dataset, device, num_workers=4))
        timings["b"].append(engine_epoch(dataset, device))
        timings["c"].append(compute_bound_epoch(dataset, device))
        timings["d"].append(engine_epoch(dataset, device, deterministic=True))
    for key, label in (("a0", "(a) notes' DataLoader+ToTensor epoch, 0 workers"),
                       ("a4", "(a) notes' DataLoader+ToTensor epoch, 4 workers"),
                       ("b", "(b) engine epoch (device-resident batches)"),
                       ("c", "(c) compute-only bound"),
                       ("d", "(d) engine epoch, deterministic algorithms")):
        print(f"{label:50s} median {statistics.median(timings[key]):6.2f} s, "
              f"min {min(timings[key]):6.2f} s")
    report_ratio("(a)/(b), the notes' 4 workers", timings["a4"], timings["b"], "target >= 5")
    report_ratio("(a)/(b), 0 workers", timings["a0"], timings["b"], "")
    report_ratio("(b)/(c)", timings["b"], timings["c"], "target <= 1.15")
    report_ratio("(d)/(b), deterministic's cost", timings["d"], timings["b"], "")


if __name__ == "__main__":
    main()
