"""What a run's record needs before MLflow or Optuna is imported: a tracking server that
answers, a SQLite file that is one and can be written, a database server that answers."""

from __future__ import annotations

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
