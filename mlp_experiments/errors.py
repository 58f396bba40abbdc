"""`UserError`, the one exception a command turns into its message, and the wording of the
config errors Hydra and OmegaConf raise."""

from __future__ import annotations

import difflib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

from omegaconf import DictConfig, OmegaConf

from mlp_experiments import held_signals


class UserError(Exception):
    """A mistake in the input (config, data, tracking server): its message says how to fix it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, docker stop, Kubernetes, systemd), raised where Ctrl-C raises
    KeyboardInterrupt: every path that ends a run as interrupted ends it the same way."""


_received: list[int] = []  # the signal that stopped the command, once one has


def stop_on_signals() -> None:
    """SIGTERM stops the command as Ctrl-C does; after the first of either, both are ignored
    while the command closes its records (a second Ctrl-C used to cut that short and leave a
    run RUNNING). SIGKILL still ends it at once. Call it in the `try` whose
    `except KeyboardInterrupt` ends the command: a Ctrl-C held while it loaded is raised here."""

    def stop(signum: int, _frame) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _received.append(signum)
        raise_if_stopped()

    signal.signal(signal.SIGINT, outside_libraries(stop))
    signal.signal(signal.SIGTERM, outside_libraries(stop))
    if held_signals:  # a Ctrl-C while the command loaded (mlp_experiments/__init__.py)
        stop(held_signals[0], None)


# Libraries whose own Python code a stop must not cut: it leaves their state half-updated.
MID_UPDATE_LIBRARIES = ("sqlalchemy", "omegaconf")


def outside_libraries(handler: Callable[[int, FrameType | None], None]):
    """The signal handler `handler`, run at once unless the signal landed in the Python code of
    one of MID_UPDATE_LIBRARIES: then again every 50 ms until it lands outside. A stop
    (KeyboardInterrupt, submitit's SystemExit) raised there was seen in CI to
    * make SQLAlchemy drop its connection with a SQLite statement unfinished (the milliseconds
      it spends between two calls of the driver): the file stayed locked for every other
      writer (the study's other workers, the worker's own heartbeat and its records of the
      stop) as long as the stop's traceback lived, and each waited 60 s and failed;
    * leave an OmegaConf node half-built while Hydra composed the config: its cleanup then
      failed with AttributeError, which Hydra reports as a config error, exit 1.
    A signal in the database driver's wait for a server (psycopg) runs at once: that wait can
    be long."""

    def deferred(signum: int, frame: FrameType | None) -> None:
        if in_library_code(frame):
            signal.signal(signal.SIGALRM, lambda _alarm, later: deferred(signum, later))
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            return
        signal.setitimer(signal.ITIMER_REAL, 0)  # a second signal came first: runs once
        handler(signum, frame)

    return deferred


def in_library_code(frame: FrameType | None) -> bool:
    """Is the frame's stack in one of MID_UPDATE_LIBRARIES, with no database driver's frame
    above it?"""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("psycopg"):
            return False
        if module.startswith(MID_UPDATE_LIBRARIES):
            return True
        frame = frame.f_back
    return False


def raise_if_stopped() -> None:
    """Raise the stop of a signal received; called again at safe points (an epoch's end,
    before a run is marked finished) because Python drops an exception raised while it runs a
    destructor or a weakref callback, and the signal would be lost."""
    if _received:
        raise Terminated() if _received[0] == signal.SIGTERM else KeyboardInterrupt()


def stop_received() -> bool:
    """Has a Ctrl-C or SIGTERM stopped the command?"""
    return bool(_received)


@contextmanager
def stops_over_errors() -> Iterator[None]:
    """An exception raised once a Ctrl-C or SIGTERM has come is raised as that stop: the signal
    cut a library mid-update and its cleanup failed (as OmegaConf's did, raising AttributeError
    in CI, before outside_libraries kept stops out of it), so the error is the signal's doing
    and the command ends stopped."""
    try:
        yield
    except Exception:
        raise_if_stopped()
        raise


def exit_on_mistake(error: UserError) -> NoReturn:
    """End the command with the mistake's one line, unless a Ctrl-C or SIGTERM came first: a
    library the signal cut mid-update can fail in its cleanup (stops_over_errors), and that
    error is the signal's doing, so the stop is raised instead."""
    raise_if_stopped()
    raise SystemExit(f"error: {error}") from None


def interrupted_exit_code(stop: KeyboardInterrupt) -> int:
    """The shell's code for the signal that stopped the command: 128 + its number."""
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


def exit_interrupted(stop: KeyboardInterrupt) -> NoReturn:
    """End a stopped command, its records closed, with interrupted_exit_code. Not by
    SystemExit: once a KeyboardInterrupt has left code that exec() ran from a string (the
    methods dataclasses define: a Ctrl-C while MLflow imports pydantic), CPython ends a
    `python -m` process by SIGINT whatever code it was given (Py_RunMain's
    _Py_UnhandledKeyboardInterrupt). A script or a spawned worker exits with the code it gives."""
    exit_now(interrupted_exit_code(stop))


def exit_now(code: int = 0) -> NoReturn:
    """End the command with `code` without the interpreter's teardown: by then every record is
    written and closed, and the teardown would only run the destructors of torch's CUDA
    libraries, which page in ~70 MiB (the process's peak memory) and take about a second."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_UNKNOWN_KEY = re.compile(r"Key '([^']+)' not in '[^']+'\s+full_key: (\S+)")


def explain_unknown_key(message: str, cfg: DictConfig | None) -> str:
    """Add the keys that do exist (and the nearest one) to Hydra's 'Key ... not in' message."""
    match = _UNKNOWN_KEY.search(message)
    if not match or cfg is None:
        return message
    key, full_key = match.groups()
    parent = full_key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig):
        return message
    valid = [str(k) for k in node if not str(k).startswith("_")]
    close = [f"{parent + '.' if parent else ''}{k}"
             for k in difflib.get_close_matches(key, valid, n=1)]
    if not parent and not close:  # a key of a section named without it: epochs, lr
        close = [path for path in leaf_paths(cfg) if path.rsplit(".", 1)[-1] == key][:1]
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (
        f"Unknown config key '{full_key}'.{hint}\n"
        f"Keys under '{parent or '<root>'}': {', '.join(valid)}"
    )


def wrong_value(error: BaseException) -> str | None:
    """OmegaConf's refusal of a value for its key's type, in one line: `trainer.epochs: Value
    'abc' of type 'str' could not be converted to Integer.`; None for any other error."""
    from omegaconf.errors import ValidationError

    while error is not None:
        if isinstance(error, ValidationError) and error.full_key:
            return f"{error.full_key}: {str(error).splitlines()[0].rstrip('.')}."
        error = error.__cause__
    return None


def with_causes(error: BaseException) -> str:
    lines = [str(error)]
    while error.__cause__ is not None:
        error = error.__cause__
        lines.append(str(error))
    return "\n".join(lines)


def leaf_paths(cfg: DictConfig) -> list[str]:
    """Every key of a config, dotted (`trainer.epochs`, `optimizer.lr`)."""

    def walk(tree: dict, prefix: str) -> list[str]:
        return [path for key, value in tree.items()
                for path in (walk(value, f"{prefix}{key}.") if isinstance(value, dict)
                             else [f"{prefix}{key}"])]

    return walk(OmegaConf.to_container(cfg, resolve=False), "")
