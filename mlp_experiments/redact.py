"""Credentials never leave the process: URLs in printed, logged and recorded text are masked.

`postgresql+psycopg://mlp:secret@db:5432/optuna` becomes `postgresql+psycopg://mlp:***@db:5432/optuna`,
in whatever text it stands (a URL, an override, a whole YAML dump).
"""

from __future__ import annotations

import re

_USER_AND_PASSWORD = re.compile(r"(?P<prefix>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*):[^@/\s'\"]*@")


def redact(text: str) -> str:
    return _USER_AND_PASSWORD.sub(r"\g<prefix>:***@", text)
