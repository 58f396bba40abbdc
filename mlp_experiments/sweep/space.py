"""A sweep's search space: Hydra's sweep grammar (choice, range, interval, tag(log, ...)),
parsed by Hydra's own override parser as Hydra's Optuna sweeper plugin parses it, mapped to
Optuna distributions; a trial's values drawn from them; the grid and the corners of a space."""

from __future__ import annotations

from typing import Any

from mlp_experiments.errors import UserError


def parse_space(space: dict[str, str]) -> dict[str, Any]:
    """Map Hydra sweep expressions to Optuna distributions, with Hydra's own override parser
    (the grammar of Hydra's Optuna sweeper plugin)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    distributions = {}
    for key, expression in space.items():
        try:
            (override,) = parser.parse_overrides([f"{key}={expression}"])
        except Exception as error:
            raise UserError(f"space.{key}: cannot parse '{expression}': {error}") from None
        distributions[key] = to_distribution(key, expression, override)
    return distributions


def to_distribution(key: str, expression: str, override) -> Any:
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    value = override.value()
    log_scale = "log" in getattr(value, "tags", set())
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution([choice_value(v) for v in value.list])
    if isinstance(value, RangeSweep):
        start, stop, step = value.start, value.stop, value.step
        if all(isinstance(v, int) for v in (start, stop, step)) and step > 0 and stop > start:
            last = start + (stop - start - 1) // step * step  # range() excludes stop
            return IntDistribution(start, last, step=step)
        return CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(low, high, log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    raise UserError(
        f"space.{key}: '{expression}' is not a search expression we can map: use "
        f"choice(...), range(start, stop[, step]), interval(low, high) or "
        f"tag(log, interval(low, high))."
    )


def choice_value(value: Any) -> Any:
    """Optuna's categorical choices are scalars: a list choice travels as its override text."""
    if isinstance(value, dict):
        raise UserError(f"choice({value}): dictionaries cannot be searched; choose list items.")
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return value


def suggest(trial, key: str, distribution) -> Any:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high,
                                 step=distribution.step, log=distribution.log)
    return trial.suggest_float(key, distribution.low, distribution.high, log=distribution.log)


def grid_of(distributions: dict[str, Any], variants: dict) -> dict[str, list]:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    grid = {"variant": list(variants)} if variants else {}
    for key, distribution in distributions.items():
        if isinstance(distribution, CategoricalDistribution):
            grid[key] = list(distribution.choices)
        elif isinstance(distribution, IntDistribution) and not distribution.log:
            grid[key] = list(range(distribution.low, distribution.high + 1, distribution.step))
        else:
            raise UserError(
                f"space.{key}: a grid needs choice(...) or range(...), not an interval."
            )
    return grid


def corner_params(distributions: dict[str, Any], variants: dict) -> list[dict[str, Any]]:
    """One trial per value at the ends of every dimension (every choice, every variant)."""
    from optuna.distributions import CategoricalDistribution

    middle = {k: (d.choices[0] if isinstance(d, CategoricalDistribution) else d.low)
              for k, d in distributions.items()}
    corners = []
    for key, distribution in distributions.items():
        values = (distribution.choices if isinstance(distribution, CategoricalDistribution)
                  else (distribution.low, distribution.high))
        corners += [{**middle, key: value} for value in values]
    for name in variants or [None]:
        corners.append({**middle, **({"variant": name} if name else {})})
    return corners
