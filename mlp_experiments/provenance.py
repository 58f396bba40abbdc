"""What a run needs to be rebuilt from its record: the code it ran (the package checkout's
commit and its uncommitted changes) and the environment (the lock file's hash, Python, torch,
CUDA and cuDNN versions). Each is asked once per process: a sweep's trials share them."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent  # git finds the repository from the package


def git(*arguments: str, cwd: Path = CHECKOUT) -> subprocess.CompletedProcess:
    """A git command in the package's checkout (or `cwd`); OSError where there is no git."""
    return subprocess.run(["git", *arguments], capture_output=True, text=True, cwd=cwd)


@functools.cache
def git_commit() -> str:
    """The commit of the code this process runs: the package's checkout, not the working
    directory's. An image has no checkout; its build records the commit in
    MLP_EXPERIMENTS_GIT_COMMIT."""
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode == 0:
            return head.stdout.strip()
    except OSError:  # no git
        pass
    return os.environ.get("MLP_EXPERIMENTS_GIT_COMMIT", "unknown")


@functools.cache
def code_diff() -> str:
    """The checkout's uncommitted changes against its commit, as `git apply` takes them: the
    tracked files' changes, then each untracked file (not ignored) as a new file. '' when
    the tree is clean or there is no checkout."""
    try:
        root = git("rev-parse", "--show-toplevel")
    except OSError:
        return ""
    if root.returncode != 0:
        return ""
    top = Path(root.stdout.strip())
    untracked = git("ls-files", "--others", "--exclude-standard", "-z", cwd=top).stdout
    added = [git("diff", "--no-index", "--binary", "/dev/null", name, cwd=top).stdout
             for name in untracked.split("\0") if name]
    return git("diff", "HEAD", "--binary", cwd=top).stdout + "".join(added)


def lock_digest() -> str:
    """sha256 of the project's uv.lock (the exact version of every package), 'none' without."""
    lock = CHECKOUT.parent / "uv.lock"
    return hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else "none"


@functools.cache
def environment(device_type: str) -> dict[str, str]:
    """The versions a run's numbers depend on, as MLflow tags. cuDNN's only for a run on CUDA:
    asking its version loads the library (73 MiB of a CPU run's memory), which a CPU run
    never uses."""
    import torch

    cudnn = torch.backends.cudnn.version() if device_type == "cuda" else "unused"
    return {"env.uv_lock_sha256": lock_digest(), "env.python": platform.python_version(),
            "env.torch": torch.__version__, "env.cuda": torch.version.cuda or "none",
            "env.cudnn": str(cudnn or "none")}
