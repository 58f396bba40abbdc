"""Credentials never leave the process: URLs in printed, logged and recorded text are masked.

`postgresql+psycopg://mlp:secret@db:5432/optuna` becomes `postgresql+psycopg://mlp:***@db:5432/optuna`,
in whatever text it stands (a URL, an override, a whole YAML dump). A training config never
holds one as a value: Hydra writes the config into the run's folder (`.hydra/*.yaml`), so a
password comes from the environment (CREDENTIALS_ADVICE), which the config reads through
`${oc.env:...}` and Hydra writes unresolved.
"""

from __future__ import annotations

import re

_USER_AND_PASSWORD = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*):[^@/\s'\"]*@")


def redact(text: str) -> str:
    return _USER_AND_PASSWORD.sub(r"\g<prefix>:***@", text)


CREDENTIALS_ADVICE = (
    "keep it in the environment instead: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
    "for an MLflow server (http/https), PGPASSWORD or ~/.pgpass for PostgreSQL, or the whole URL "
    "in $MLFLOW_TRACKING_URI, which the default tracking.uri reads (the run's files then hold "
    "${oc.env:MLFLOW_TRACKING_URI,...}, not the password)")


def has_credentials(text: str) -> bool:
    return _USER_AND_PASSWORD.search(text) is not None


class RedactingStream:
    """A text stream that masks credentials in what is written to it (Hydra's --cfg, --info
    and --help print the config)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(redact(text))

    def __getattr__(self, name: str):
        return getattr(self.stream, name)
