"""An epoch's batches of a dataset split: gathered on the training device from the uint8 tensor
(`data.loader=device`), or, as in the notes, through a `DataLoader` that turns one PIL image at a
time into a float tensor (`data.loader=torch`)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from mlp_experiments.data import Dataset


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator that depends on (seed, epoch) only, so a resumed run draws the same order."""
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    return torch.Generator().manual_seed(state)


class DeviceBatches:
    """The whole split on the training device; each epoch a fresh permutation, sliced there.
    uint8 images become float (N, 1, 28, 28) in [0, 1], normalised when asked."""

    def __init__(self, inputs, targets, batch_size: int, device: torch.device, shuffle: bool,
                 stats: tuple[float, float] | None = None):
        self.inputs = inputs.to(device)
        self.targets = targets.to(device)
        self.batch_size, self.shuffle, self.stats = batch_size, shuffle, stats
        self.num_examples = len(targets)

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def epoch(self, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.shuffle:
            order = torch.randperm(self.num_examples, generator=epoch_generator(seed, epoch))
            order = order.to(self.inputs.device)
        for start in range(0, self.num_examples, self.batch_size):
            if self.shuffle:
                index = order[start : start + self.batch_size]
                inputs = self.inputs.index_select(0, index)  # faster than inputs[index]
                targets = self.targets.index_select(0, index)
            else:
                inputs = self.inputs[start : start + self.batch_size]
                targets = self.targets[start : start + self.batch_size]
            yield self.to_model_input(inputs), targets

    def to_model_input(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dtype != torch.uint8:
            return inputs
        images = inputs.unsqueeze(1) / 255  # uint8 / int promotes to float32
        if self.stats:
            images = images.sub_(self.stats[0]).div_(self.stats[1])
        return images


class ImageDataset(torch.utils.data.Dataset):
    """The notes' per-sample path: a PIL image through `transforms.ToTensor()` (and
    `transforms.Normalize` when asked, as note 003 does)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 stats: tuple[float, float] | None = None):
        from torchvision import transforms

        self.images, self.labels = images.numpy(), labels
        steps = [transforms.ToTensor()]
        if stats:
            steps.append(transforms.Normalize((stats[0],), (stats[1],)))
        self.transform = transforms.Compose(steps)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


class LoaderBatches:
    """`torch.utils.data.DataLoader` over one example at a time, moved to the device per batch."""

    def __init__(self, inputs, targets, batch_size: int, device: torch.device, shuffle: bool,
                 stats: tuple[float, float] | None = None):
        if inputs.dtype == torch.uint8:
            self.dataset = ImageDataset(inputs, targets, stats)
        else:
            self.dataset = torch.utils.data.TensorDataset(inputs, targets)
        self.batch_size, self.device, self.shuffle = batch_size, device, shuffle
        self.num_examples = len(targets)

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def epoch(self, seed: int, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            generator=epoch_generator(seed, epoch),
        )
        for inputs, targets in loader:
            yield inputs.to(self.device), targets.to(self.device)


def make_batches(dataset: Dataset, split: str, batch_size: int, device: torch.device,
                 loader: str):
    """Batches of one split; only the training split is shuffled."""
    batches_class = DeviceBatches if loader == "device" else LoaderBatches
    return batches_class(*getattr(dataset, split), batch_size=batch_size, device=device,
                         shuffle=split == "train", stats=dataset.normalization)
