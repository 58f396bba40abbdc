"""The image's costs: its size, its build time, and a training run in a container against the
same run on the host.

    uv run python benchmarks/container.py [--pairs 3] [--build]

--build first makes a Debian base with docker/debian-base.sh (under a throw-away tag) and builds
the image from scratch (`docker/build.sh <tag> --no-cache`: the project's base is kept, the
locked wheels come from the host's uv cache when it has them), and prints how long each took.
Then the image's size; what starting a container costs (`python -c pass` through docker/run.sh
against the host's Python, median of 5); how fast each interpreter runs a pure-Python loop (best
of 5); and the default command (the concise MLP, 5 epochs on FashionMNIST, tracking=none) run
alternately on the host and in a container (docker/run.sh, the data mounted read-only at its
own path), with the median of the pairs' wall-time ratios (target <= 1.05). Each arm is one
whole command, start-up included; both use every core.
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
LOOP = ("import timeit; print(min(timeit.repeat('sum(i * i for i in range(3_000_000))', "
        "number=1, repeat=5)))")


def seconds(command: list[str], folder: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=folder, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def container_python(*arguments: str) -> list[str]:
    return [str(ROOT / "docker" / "run.sh"), "--entrypoint", "python", IMAGE, *arguments]


def in_container(folder: Path) -> list[str]:
    """docker/run.sh runs in the working folder (`seconds` runs each command in `folder`)."""
    return [str(ROOT / "docker" / "run.sh"), "-v", f"{DATA}:{DATA}:ro", IMAGE, *TRAIN,
            f"trainer.checkpoint_dir={folder / 'checkpoints'}"]


def on_host(folder: Path) -> list[str]:
    return [sys.executable, "-m", *TRAIN, f"trainer.checkpoint_dir={folder / 'checkpoints'}"]


def build_from_scratch() -> None:
    base = "localhost/debian-base:bench"
    made = seconds([str(ROOT / "docker" / "debian-base.sh"), base], ROOT)
    print(f"Debian base by debootstrap: {made:.0f} s")
    subprocess.run(["podman", "rmi", base], check=True, stdout=subprocess.DEVNULL)
    build = [str(ROOT / "docker" / "build.sh"), IMAGE, "--no-cache"]
    print(f"image build from scratch on the kept base: {seconds(build, ROOT):.0f} s")


def loop_seconds(python: list[str], folder: Path) -> float:
    return float(subprocess.run([*python, "-c", LOOP], check=True, capture_output=True,
                                text=True, cwd=folder).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--build", action="store_true")
    args = parser.parse_args()
    if args.build:
        build_from_scratch()
    else:
        subprocess.run([str(ROOT / "docker" / "build.sh"), IMAGE], check=True,
                       stdout=subprocess.DEVNULL)
    size = subprocess.run(["podman", "image", "inspect", IMAGE, "--format", "{{.Size}}"],
                          check=True, capture_output=True, text=True).stdout
    print(f"image size: {int(size) / 1e9:.2f} GB")
    ratios = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        host_folder, container_folder = folder / "host", folder / "container"
        host_folder.mkdir()
        container_folder.mkdir()
        container_folder.chmod(0o777)  # the image's non-root user writes its outputs here
        start = {arm: statistics.median(seconds(command, folder) for _ in range(5))
                 for arm, command in (("host", [sys.executable, "-c", "pass"]),
                                      ("container", container_python("-c", "pass")))}
        print(f"start-up, python -c pass: host {start['host']:.2f} s, container "
              f"{start['container']:.2f} s")
        host_loop = loop_seconds([sys.executable], folder)
        container_loop = loop_seconds(container_python(), folder)
        print(f"pure-Python loop, best of 5: host {host_loop * 1000:.0f} ms, container "
              f"{container_loop * 1000:.0f} ms ({host_loop / container_loop:.2f}x faster in "
              f"the image)")
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
