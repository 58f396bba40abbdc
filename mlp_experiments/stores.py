"""The stores of the records: what they need before MLflow or Optuna is imported (a tracking
server that answers, a SQLite file that is one and can be written, a database server that
answers), and an MLflow store opened with its experiment."""

from __future__ import annotations

import functools
import logging
import os
import socket
import tempfile
import urllib.error
import urllib.request
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from urllib.parse import urlsplit

from mlp_experiments.errors import UserError
from mlp_experiments.locks import file_lock
from mlp_experiments.redact import CREDENTIALS_ADVICE, has_credentials, redact


def sqlite_path(uri: str) -> Path | None:
    """The file of a `sqlite:///` URL (an MLflow store or an Optuna storage), else None."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def sqlite_lock(uri: str) -> AbstractContextManager:
    """The file lock beside a SQLite file under which processes take turns: creating its
    tables (two creations at once fail one of them), counting a study's trials. Any other URL
    needs none. Yields the function that releases it early."""
    database = sqlite_path(uri)
    return file_lock(Path(f"{database}.lock")) if database else nullcontext(lambda: None)


def check_server(uri: str) -> None:
    """An HTTP tracking server must answer its health check now, not after an hour of training."""
    if has_credentials(uri):  # urllib cannot use them, MLflow takes them from its variables
        raise UserError(f"tracking.uri={redact(uri)}: credentials in an MLflow server's URL are "
                        f"not used; {CREDENTIALS_ADVICE}.")
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
            return
    except (urllib.error.URLError, OSError) as error:
        raise UserError(
            f"MLflow tracking server {redact(uri)} is unreachable ({error}). Start it with "
            f"`uv run mlflow server --host 127.0.0.1 --port 5000`, point tracking.uri at a "
            f"running one, or record locally with tracking.uri=sqlite:///mlflow.db "
            f"(or tracking=none)."
        ) from None


def check_local_store(uri: str) -> None:
    """A SQLite store where nothing can be written fails now, before MLflow and torch load
    (MLflow itself retries such writes for minutes)."""
    database = sqlite_path(uri)
    if database is None:
        return
    target = database if database.exists() else database.parent
    if not os.access(target, os.W_OK):
        raise UserError(
            f"The MLflow store {uri} is read-only here ({target} cannot be written): point "
            f"tracking.uri at a writable place, e.g. tracking.uri=sqlite:///mlflow.db, or "
            f"record nothing with tracking=none."
        )


SQLITE_HEADER = b"SQLite format 3\x00"
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306}


def check_database(uri: str, key: str) -> None:
    """A store given by `key` (tracking.uri, sweep.storage) that cannot be what it says fails
    now with its name and the fix, not as SQLAlchemy's error after the imports: a file that is
    not an SQLite database, a database server that does not answer."""
    database = sqlite_path(uri)
    if database is not None and database.is_file():
        try:
            with open(database, "rb") as file:
                header = file.read(len(SQLITE_HEADER))
        except OSError as error:
            raise UserError(f"{key}={uri}: {database} cannot be read ({error.strerror}): fix "
                            f"its permissions, or point {key} at another file.") from None
        if header and header != SQLITE_HEADER:
            raise UserError(f"{key}={uri}: {database} is not an SQLite database. Move it aside "
                            f"(mv {database} {database}.broken) to start a new one, or point "
                            f"{key} at the right file.")
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0]
    if scheme in DATABASE_PORTS and parts.hostname:
        address = (parts.hostname, parts.port or DATABASE_PORTS[scheme])
        try:
            socket.create_connection(address, timeout=5).close()
        except OSError as error:
            raise UserError(f"{key}={redact(uri)}: the database server at {address[0]}:"
                            f"{address[1]} does not answer ({error.strerror or error}). Start "
                            f"it, or fix the host and port in {key}.") from None


def check_folder(folder: str | Path, key: str) -> None:
    """A folder the command will create or write (an output or checkpoint folder, a cache):
    named with the OS's reason now, before any work, rather than as a traceback later. Tried
    by creating a temporary folder in its nearest existing parent: nothing is left behind."""
    path = Path(folder).expanduser().absolute()
    parent = next(p for p in (path, *path.parents) if p.exists())
    try:
        if not parent.is_dir():
            raise NotADirectoryError(0, "a file is in the way", str(parent))
        with tempfile.TemporaryDirectory(dir=parent):
            pass
    except OSError as error:
        raise UserError(f"{key}={folder}: this folder cannot be created or written here "
                        f"({error.strerror} in {parent}). Choose a folder you can write, e.g. "
                        f"under your home or the working directory.") from None


# An experiment's kind, as MLflow's UI names it (its JS bundle reads and writes the tag; MLflow's
# Python package has no constant for either): these experiments train models, not GenAI apps.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def without_traceback(record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text = None, None
    return True


# MLflow's SQL store logs every failed query with its traceback, also those tried again: its
# message stays, the traceback goes. Nor is its progress said (a new store's tables).
logging.getLogger("mlflow.store.db.utils").addFilter(without_traceback)
for chatter in ("mlflow.store.db.utils", "mlflow.tracking.fluent"):
    logging.getLogger(chatter).setLevel(logging.WARNING)


@functools.cache
def experiment_id(uri: str, name: str) -> str:
    """The experiment's id in the store (created if new, with the model-training kind), looked
    up once per process. Fresh processes on one new SQLite file take turns creating it."""
    import mlflow

    with sqlite_lock(uri):
        database = sqlite_path(uri)
        if database and not database.exists() and (made := new_sqlite_store(database, name)):
            return made
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # a store from before the kind was set
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG,
                                  MODEL_TRAINING_KIND)
    return experiment.experiment_id


def new_sqlite_store(database: Path, experiment: str) -> str | None:
    """A new SQLite store, made whole with its experiment in a file beside it, then linked into
    place: MLflow creates its tables in dozens of transactions, and a process killed among them
    leaves a store that no later one can open ("duplicate column name"). None if another
    process (a sqlite3 shell, an MLflow server) made the file meanwhile: that one is used, as
    it is, never replaced under its open connections."""
    import mlflow

    scratch = database.with_name(f".{database.name}.new")
    for left in database.parent.glob(f"{scratch.name}*"):  # of a creator killed (under the lock)
        left.unlink()
    try:
        client = mlflow.MlflowClient(f"sqlite:///{scratch}")
        made = client.create_experiment(experiment,
                                        tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})
        os.link(scratch, database)  # unlike a rename, fails if the file exists
        return made
    except FileExistsError:
        return None
    finally:
        scratch.unlink(missing_ok=True)


def open_store(uri: str, experiment: str) -> str:
    """Check the store answers and return the experiment's id: one message if it does not."""
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    try:
        return experiment_id(uri, experiment)
    except Exception as error:
        raise UserError(f"Cannot open MLflow tracking store {redact(uri)} "
                        f"({redact(str(error))}). Fix tracking.uri, or record nothing with "
                        f"tracking=none.") from None
