"""The image's costs: its size, its build time, and a training run in a container against the
same run on the host.

    uv run python benchmarks/container.py [--pairs 3] [--build]

--build first builds the image from scratch (`docker/build.sh <tag> --no-cache`: the Debian base
is kept, the locked wheels come from the host's uv cache when it has them) and prints how long
that took. Then the image's size, and the default command (the concise MLP, 5 epochs on
FashionMNIST, tracking=none) run alternately on the host and in a container (`podman run`, the
data mounted read-only at the same path), with the median of the pairs' wall-time ratios
(target <= 1.05). Each arm is one whole command, start-up included; both use every core.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "localhost/mlp-experiments:bench"
DATA = "/usr/share/datasets/fashion-mnist"  # Debian's FashionMNIST, found there by data.py
TRAIN = ["mlp_experiments.train", "tracking=none"]


def seconds(command: list[str], folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=folder, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def in_container(folder: Path) -> list[str]:
    return ["podman", "run", "--rm", "--network", "host", "--ulimit", "nofile=20000:20000",
            "--ulimit", "nproc=4096:4096", "--read-only", "-v", f"{DATA}:{DATA}:ro",
            "-v", f"{folder}:{folder}", "--workdir", str(folder), IMAGE, *TRAIN,
            f"trainer.checkpoint_dir={folder / 'checkpoints'}"]


def on_host(folder: Path) -> list[str]:
    return [sys.executable, "-m", *TRAIN, f"trainer.checkpoint_dir={folder / 'checkpoints'}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--build", action="store_true")
    args = parser.parse_args()
    build = [str(ROOT / "docker" / "build.sh"), IMAGE]
    if args.build:
        print(f"build from scratch: {seconds([*build, '--no-cache'], ROOT):.0f} s")
    else:
        subprocess.run(build, check=True, stdout=subprocess.DEVNULL)
    size = subprocess.run(["podman", "image", "inspect", IMAGE, "--format", "{{.Size}}"],
                          check=True, capture_output=True, text=True).stdout
    print(f"image size: {int(size) / 1e9:.2f} GB")
    ratios = []
    with tempfile.TemporaryDirectory() as temporary:
        host_folder, container_folder = Path(temporary) / "host", Path(temporary) / "container"
        host_folder.mkdir()
        container_folder.mkdir(mode=0o777)  # the image's non-root user writes its outputs here
        container_folder.chmod(0o777)
        seconds(in_container(container_folder), container_folder)  # warm-up: the page cache
        for pair in range(1, args.pairs + 1):
            host = seconds(on_host(host_folder), host_folder)
            container = seconds(in_container(container_folder), container_folder)
            ratios.append(container / host)
            print(f"pair {pair}: host {host:.1f} s, container {container:.1f} s, "
                  f"ratio {ratios[-1]:.3f}")
    print(f"container / host wall time, median of {args.pairs}: "
          f"{statistics.median(ratios):.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
