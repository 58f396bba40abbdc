"""Datasets: find, verify and decode the IDX files once, generate the synthetic ones, split off
validation (batches.py draws each epoch's batches).

FashionMNIST and MNIST are looked for in `data.root` (the four IDX files, gzipped or not, or
torchvision's `<root>/<Name>/raw/` layout), then in the cache folder `mlp-fetch` fills, then
where Debian's `dataset-fashion-mnist` puts them, then downloaded with torchvision. A file may
be spelled `train-images-idx3-ubyte` (the release's name) or `train-images.idx3-ubyte` (as some
copies spell it): its MD5 decides, not its name. The decoded images stay uint8 tensors.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import OmegaConf

from mlp_experiments.errors import UserError

if TYPE_CHECKING:  # torch is imported where tensors are made: mlp-fetch's checks run without it
    import torch

SPLIT_FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxSource:
    folder: str  # torchvision's folder name under the root
    classes: tuple[str, ...]
    md5: dict[str, str]  # MD5 of each decompressed file of the published release
    system_dir: str | None = None  # where a distribution package installs the files


SOURCES = {
    "fashion_mnist": IdxSource(
        folder="FashionMNIST",
        classes=("t-shirt", "trouser", "pullover", "dress", "coat",
                 "sandal", "shirt", "sneaker", "bag", "ankle boot"),
        md5={
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        system_dir="/usr/share/datasets/fashion-mnist",
    ),
    "mnist": IdxSource(
        folder="MNIST",
        classes=tuple(str(digit) for digit in range(10)),
        md5={
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
}


@dataclass(frozen=True)
class Dataset:
    """Inputs and targets of each split: uint8 N x 28 x 28 images and int64 labels, or float
    N x F features and float N x 1 targets for regression."""

    name: str
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    classes: tuple[str, ...]  # empty for regression
    digest: str  # identifies the exact bytes (or generator settings) the splits came from
    source: str  # where the files were read, for the record
    normalization: tuple[float, float] | None = None  # (mean, std) for images in [0, 1]

    @property
    def in_features(self) -> int:
        return self.train[0][0].numel()

    @property
    def regression(self) -> bool:
        return not self.classes


# ---------------------------------------------------------------------------- IDX files


def read_idx(path: Path) -> tuple[torch.Tensor, str]:
    """Decode one IDX file (gzipped or not) into a uint8 tensor; return it with the MD5 of
    the decompressed bytes. The bytes are decompressed straight into the tensor (no second
    copy of a 47 MB file in memory). A truncated or damaged file raises UserError naming it."""
    import torch

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            magic = stream.read(4)
            if len(magic) < 4 or magic[:3] != b"\x00\x00\x08":
                raise UserError(f"{path} is not an IDX file of unsigned bytes. {_REFETCH}")
            dims = stream.read(4 * magic[3])
            if len(dims) < 4 * magic[3]:
                raise UserError(f"{path} is truncated (its header is incomplete). {_REFETCH}")
            shape = tuple(int.from_bytes(dims[i : i + 4], "big") for i in range(0, len(dims), 4))
            array = np.empty(shape, dtype=np.uint8)
            read = stream.readinto(memoryview(array).cast("B")) if array.size else 0
            extra = len(stream.read())
    except (OSError, EOFError, zlib.error) as error:
        raise UserError(f"{path} is corrupt ({error}). {_REFETCH}") from None
    if read != array.size or extra:
        header = 4 + len(dims)
        raise UserError(
            f"{path} holds {header + read + extra} bytes but its header {shape} needs "
            f"{header + array.size}: the file is truncated or damaged. {_REFETCH}"
        )
    digest = hashlib.md5(magic + dims)
    digest.update(array.data)
    return torch.from_numpy(array), digest.hexdigest()


_REFETCH = "Delete it and run again to fetch a fresh copy, or point data.root at a good one."


def cache_dir() -> Path:
    """Where `mlp-fetch` puts the releases it fetched (one folder each, named as torchvision
    names it): $MLP_EXPERIMENTS_CACHE, else $XDG_CACHE_HOME/mlp-experiments, else
    ~/.cache/mlp-experiments. Read when it is needed, so that a test can point it elsewhere."""
    if os.environ.get("MLP_EXPERIMENTS_CACHE"):
        return Path(os.environ["MLP_EXPERIMENTS_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "mlp-experiments"


def _candidate_dirs(source: IdxSource, root: str) -> list[Path]:
    root_path = Path(root).expanduser()
    dirs = [root_path, root_path / source.folder / "raw", cache_dir() / source.folder]
    if source.system_dir:
        dirs.append(Path(source.system_dir))
    return dirs


def spellings(name: str) -> tuple[str, str]:
    """The release's name of a file and the one with a dot: `train-images.idx3-ubyte`."""
    return name, name.replace("-idx", ".idx")


def _find_file(directory: Path, name: str) -> Path | None:
    for spelling in spellings(name):
        for candidate in (directory / f"{spelling}.gz", directory / spelling):
            if candidate.is_file():
                return candidate
    return None


def find_files(source: IdxSource, directory: Path) -> dict[str, Path] | None:
    """The four files of the release in `directory` (by the release's names), if all are there."""
    found = {name: _find_file(directory, name) for name in source.md5}
    return found if all(found.values()) else None


def _find_release(source: IdxSource, root: str) -> dict[str, Path] | None:
    for directory in _candidate_dirs(source, root):
        if found := find_files(source, directory):
            return found
    return None


def _download(name: str, source: IdxSource, root: str) -> None:
    import torchvision

    dataset_class = getattr(torchvision.datasets, source.folder)
    try:
        for train in (True, False):
            dataset_class(root, train=train, download=True)
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
        looked = "\n".join(f"  {d}" for d in _candidate_dirs(source, root))
        third_fix = (
            "install Debian's package: sudo apt-get install dataset-fashion-mnist"
            if source.system_dir
            else f"copy {cache_dir() / source.folder}/ from a machine that fetched it"
        )
        raise UserError(
            f"{name} was not found and could not be downloaded.\n"
            f"Looked in:\n{looked}\n"
            f"Download error: {' '.join(str(error).split())}\n"
            f"Fix it one of three ways:\n"
            f"  1. mlp-fetch fetch.dataset={name}: tries torchvision's mirrors and the other "
            f"sources it knows, verifies the files and puts them in {cache_dir() / source.folder}\n"
            f"  2. data.root=<folder> with the four IDX files (.gz or not), or torchvision's "
            f"<folder>/{source.folder}/raw/\n"
            f"  3. {third_fix}"
        ) from None


def _read_release(name: str, files: dict[str, Path], verify: bool) -> tuple[dict, str]:
    source = SOURCES[name]
    tensors, digests = {}, []
    for file_name, path in files.items():
        tensors[file_name], md5 = read_idx(path)
        if verify and md5 != source.md5[file_name]:
            raise UserError(
                f"{path} does not match the published {name} release (MD5 {md5}, expected "
                f"{source.md5[file_name]}). {_REFETCH} For IDX files of your own, "
                f"set data.verify=false."
            )
        digests.append(md5)
    splits = {}
    for split, (image_file, label_file) in SPLIT_FILES.items():
        images, labels = tensors[image_file], tensors[label_file].long()
        if len(images) != len(labels):
            raise UserError(
                f"{files[image_file]} holds {len(images)} images but {files[label_file]} "
                f"{len(labels)} labels. {_REFETCH}"
            )
        if len(labels) and labels.max() >= len(source.classes):  # possible with verify=false
            raise UserError(
                f"{files[label_file]} holds the label {int(labels.max())}, but {name} has "
                f"{len(source.classes)} classes (labels 0 to {len(source.classes) - 1}): it is "
                f"not a {name} label file. Point data.root at the right files (data.verify=true "
                f"checks them against the published release)."
            )
        splits[split] = (images, labels)
    return splits, hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def load_release(name: str, root: str, verify: bool) -> tuple[dict, str, str]:
    """Find (or download), verify and decode the four files."""
    source = SOURCES[name]
    files = _find_release(source, root)
    if files is None:
        _download(name, source, root)
        files = _find_release(source, root)
    splits, digest = _read_release(name, files, verify)
    return splits, digest, str(next(iter(files.values())).parent)


# ---------------------------------------------------------------------------- generated data


def release_digest(cfg) -> str:
    """Identifies the data before any split: the files' checksums, or the generator's
    settings. Cheap once the dataset was loaded (sweeps hash every trial's config with it)."""
    if cfg.name == "synthetic":
        settings = ("synthetic", cfg.train_size, cfg.test_size, cfg.seed, cfg.num_classes,
                    cfg.features)
    elif cfg.name == "regression":
        settings = ("regression", cfg.train_size, cfg.test_size, cfg.seed, cfg.features,
                    cfg.noise)
    else:
        return load_dataset(cfg).digest
    return hashlib.sha256(repr(settings).encode()).hexdigest()[:16]


def synthetic_release(cfg) -> tuple[dict, str]:
    """Noisy copies of one random prototype per class: 28x28 uint8 images (or `features`
    real values), learnable in one epoch, the same for the same seed."""
    import torch

    generator = torch.Generator().manual_seed(cfg.seed)
    shape = (28, 28) if cfg.features is None else (cfg.features,)
    prototypes = torch.rand(cfg.num_classes, *shape, generator=generator)

    def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, cfg.num_classes, (count,), generator=generator)
        inputs = prototypes[labels] + torch.randn(count, *shape, generator=generator) * 0.25
        if cfg.features is None:
            inputs = (inputs * 255).clamp(0, 255).to(torch.uint8)
        return inputs, labels

    splits = {"train": draw(cfg.train_size), "test": draw(cfg.test_size)}
    return splits, release_digest(cfg)


def friedman1(x: torch.Tensor) -> torch.Tensor:
    import torch

    return (10 * torch.sin(torch.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2
            + 10 * x[:, 3] + 5 * x[:, 4])


def regression_release(cfg) -> tuple[dict, str]:
    """Friedman's problem #1: only the first five of `features` uniform inputs matter."""
    import torch

    if cfg.features < 5:
        raise UserError(f"data.features={cfg.features}: Friedman's problem needs at least 5.")
    generator = torch.Generator().manual_seed(cfg.seed)

    def draw(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = torch.rand(count, cfg.features, generator=generator)
        noise = torch.randn(count, generator=generator) * cfg.noise
        return inputs, (friedman1(inputs) + noise).unsqueeze(1)

    splits = {"train": draw(cfg.train_size), "test": draw(cfg.test_size)}
    return splits, release_digest(cfg)


# ---------------------------------------------------------------------------- splits


def split_validation(
    inputs: torch.Tensor, targets: torch.Tensor, val_size: int, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Carve a seeded, disjoint validation split from the training set."""
    import torch

    if not 0 <= val_size < len(inputs):
        raise UserError(
            f"data.val_size={val_size} must be at least 0 and below the {len(inputs)} "
            f"training examples."
        )
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(seed))
    val_index, train_index = order[:val_size], order[val_size:]
    return (inputs[train_index], targets[train_index]), (inputs[val_index], targets[val_index])


def select_classes(split, keep: list[int], num_classes: int):
    """Only the examples of the `keep` classes, relabelled 0..len(keep)-1 in that order."""
    import torch

    if len(set(keep)) != len(keep) or not all(0 <= c < num_classes for c in keep):
        raise UserError(
            f"data.classes={keep} must name distinct classes between 0 and {num_classes - 1}."
        )
    inputs, labels = split
    relabel = torch.full((num_classes,), -1, dtype=torch.long)
    relabel[keep] = torch.arange(len(keep))
    mask = relabel[labels] >= 0
    return inputs[mask], relabel[labels[mask]]


NORMALIZATIONS = {"none": None, "mnist": (0.1307, 0.3081)}


def normalization(cfg, train_inputs: torch.Tensor) -> tuple[float, float] | None:
    """(mean, std) of the pixel values in [0, 1] that batches are normalised with."""
    if cfg.normalize == "computed":
        pixels = train_inputs.float() / 255
        return pixels.mean().item(), pixels.std().item()
    return NORMALIZATIONS[cfg.normalize.value]


_LOADED: dict[str, Dataset] = {}  # the last datasets built, by their settings
KEEP_LOADED = 2


def load_dataset(cfg) -> Dataset:
    """The train/val/test splits that `cfg.data` describes, built once per process for the same
    settings (a sweep's trials share them; nothing modifies a dataset's tensors). Only the
    splits are kept: a release's undivided training set is freed once it is split."""
    key = json.dumps(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), sort_keys=True)
    if key not in _LOADED:
        if len(_LOADED) >= KEEP_LOADED:
            del _LOADED[next(iter(_LOADED))]
        _LOADED[key] = build_dataset(cfg)
    return _LOADED[key]


def build_dataset(cfg) -> Dataset:
    import torch

    if cfg.name == "synthetic":
        splits, digest = synthetic_release(cfg)
        classes, where = tuple(f"class {i}" for i in range(cfg.num_classes)), "generated"
    elif cfg.name == "regression":
        splits, digest = regression_release(cfg)
        classes, where = (), "generated"
    else:
        splits, digest, where = load_release(cfg.name.value, cfg.root, cfg.verify)
        classes = SOURCES[cfg.name.value].classes
        if cfg.classes:
            splits = {name: select_classes(split, list(cfg.classes), len(classes))
                      for name, split in splits.items()}
            classes = tuple(classes[c] for c in cfg.classes)
    train, val = split_validation(*splits["train"], cfg.val_size, cfg.split_seed)
    stats = normalization(cfg, train[0]) if train[0].dtype == torch.uint8 else None
    return Dataset(cfg.name.value, train, val, splits["test"], classes, digest, where, stats)
