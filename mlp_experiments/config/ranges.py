"""The allowed range of a numeric setting, stated beside its schema field (`ranged`), read
back by `checks.check_ranges` and listed in docs/bad-input.md (`range_table`)."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: `low` to `high`, each end included unless it is
    open. An infinite end is never included and NaN is in no range, so a float setting refuses
    NaN and inf. A list setting is checked element by element, each element one `item`.
    `example` is a value to suggest, `why` the reason for a range that does not explain itself;
    `integer` (from the field's type) only changes how the range reads."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    example: Any = None
    item: str = ""
    why: str = ""
    integer: bool = False

    @property
    def includes_low(self) -> bool:
        return not self.low_open and math.isfinite(self.low)

    @property
    def includes_high(self) -> bool:
        return not self.high_open and math.isfinite(self.high)

    def __contains__(self, value: Any) -> bool:
        above_low = value >= self.low if self.includes_low else value > self.low
        below_high = value <= self.high if self.includes_high else value < self.high
        return above_low and below_high

    @property
    def interval(self) -> str:
        """In interval notation: [0, 1), (0, inf)."""
        opening, closing = "[" if self.includes_low else "(", "]" if self.includes_high else ")"
        return f"{opening}{_number(self.low)}, {_number(self.high)}{closing}"

    def __str__(self) -> str:
        """In words, to follow "must be" or "needs": at least 1, a number in [0, 1)."""
        low = _number(self.low)
        if not math.isinf(self.high):
            return f"{'an integer' if self.integer else 'a number'} in {self.interval}"
        if self.integer:
            return f"above {low}" if self.low_open else f"at least {low}"
        return f"a finite number {f'above {low}' if self.low_open else f'of {low} or more'}"


def _number(bound: float) -> str:
    return str(int(bound)) if math.isfinite(bound) and bound == int(bound) else str(bound)


def at_least(low: float) -> Range:
    return Range(low=low)


def above(low: float) -> Range:
    return Range(low=low, low_open=True)


def between(low: float, high: float, *, high_open: bool = False) -> Range:
    return Range(low=low, high=high, high_open=high_open)


# NumPy seeds its generator with 32 bits (np.random.seed, SeedSequence): one range for every seed.
SEED = between(0, 2**32 - 1)
SEED_WHY = "NumPy takes 32-bit seeds"


def ranged(default: Any, allowed: Range, **details: Any) -> Any:
    """A schema field whose values must lie in `allowed`; `details` are the Range's example
    (the default, unless given), item and why, and the line a command's `--help` shows."""
    example = details.pop("example", default)
    if example is MISSING or example is None:
        raise TypeError("a ranged field without a default needs an example")
    about = details.pop("help", None)
    allowed = dataclasses.replace(allowed, example=example, **details)
    metadata = {"range": allowed, **({"help": about} if about else {})}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@functools.cache
def ranges(schema: type) -> dict[str, Range]:
    """The range of each ranged field of a schema, `integer` set from the field's type."""
    hints = typing.get_type_hints(schema)
    return {item.name: dataclasses.replace(item.metadata["range"],
                                           integer=number_type(hints[item.name]) is int)
            for item in dataclasses.fields(schema) if "range" in item.metadata}


def number_type(hint: Any) -> Any:
    """The number type of a field's type: int for int, int | None, list[int] or list[int] | None."""
    while typing.get_args(hint):
        hint = typing.get_args(hint)[0]
    return hint


def range_table(sections: dict[str, list[type]]) -> str:
    """The ranges of every schema of each section (schemas.schemas_by_section) as a Markdown
    table (docs/bad-input.md holds it): one row per key and range, with its schemas."""
    rows: dict[tuple, tuple[str, Range, list[str]]] = {}
    for section, schemas in sections.items():
        for schema in schemas:
            for name, allowed in ranges(schema).items():
                key = f"{section}.{name}"
                same = (key, str(allowed), allowed.item, allowed.why)  # the example may differ
                rows.setdefault(same, (key, allowed, []))[2].append(schema.__name__)
    lines = ["| key | allowed | e.g. | schemas | why |", "|---|---|---|---|---|"]
    for key, allowed, schemas in rows.values():
        words = f"every {allowed.item}: {allowed}" if allowed.item else str(allowed)
        lines.append(f"| `{key}` | {words} | `{key}={allowed.example}` | {', '.join(schemas)} "
                     f"| {allowed.why} |")
    return "\n".join(lines) + "\n"
