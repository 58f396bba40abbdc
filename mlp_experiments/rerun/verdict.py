"""mlp-rerun's verdict on a rerun's metrics against its original's: identical, within seed
noise, or where it differs and the likely cause (benchmarks/rerun_verdicts.py: how often each is
wrong)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mlp_experiments.config.identity import decides_the_result
from mlp_experiments.task import TIMINGS


@dataclass(frozen=True)
class Verdict:
    kind: str  # identical, within seed noise, differs
    detail: str

    def __str__(self) -> str:
        return self.detail


def histories(client, run_id: str, names: list[str]) -> dict[str, dict[int, float]]:
    return {name: {m.step: m.value for m in client.get_metric_history(run_id, name)}
            for name in names}


def sibling_seeds(client, run) -> list[str]:
    """The runs beside `run` (same parent) that differ from it in trainer.seed alone."""
    parent = run.data.tags.get("mlflow.parentRunId")
    if not parent:
        return []
    found = client.search_runs([run.info.experiment_id],
                               f"tags.mlflow.parentRunId = '{parent}' and "
                               f"attributes.status = 'FINISHED'")
    def result_params(other) -> dict[str, str]:
        return {key: value for key, value in other.data.params.items()
                if key != "trainer.seed" and decides_the_result(key)}
    return [other.info.run_id for other in found
            if result_params(other) == result_params(run)]


def judge(client, original, rerun_id: str, tolerance: float) -> Verdict:
    names = sorted(set(original.data.metrics) - set(TIMINGS))
    before = histories(client, original.info.run_id, names)
    seeds = [before if seed == original.info.run_id else histories(client, seed, names)
             for seed in sibling_seeds(client, original)]
    return compare(before, histories(client, rerun_id, names), seeds, tolerance)


def compare(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]],
            seeds: list[dict[str, dict[int, float]]], tolerance: float) -> Verdict:
    """The verdict on a rerun's metrics (`after`, metric -> epoch -> value) against the
    original's (`before`): identical; or every difference within the seed spread of its metric
    (the largest max - min of the original's seeds at any epoch; `seeds`, the original among
    them, two or more) and never below `tolerance`, else within `tolerance`; otherwise the
    first epoch and metric where it is not. A spread taken epoch by epoch would call a rerun
    as noisy as one more seed DIFFERS nearly always (benchmarks/rerun_verdicts.py)."""
    if before == after:
        return Verdict("identical", "identical: every metric at every epoch, bit for bit")
    bounds = {name: max([tolerance, *spreads(name, seeds)]) for name in before}
    bound_of = f"the spread of its {len(seeds)} seeds, at least rerun.tolerance {tolerance}" \
        if len(seeds) > 1 else f"rerun.tolerance {tolerance}"
    for epoch in sorted(set().union(*before.values())):
        for name, steps in sorted(before.items()):
            if epoch not in steps:
                continue
            first, again = steps[epoch], after.get(name, {}).get(epoch, math.nan)
            if not abs(again - first) <= bounds[name]:
                return Verdict("differs", f"DIFFERS from epoch {epoch}: {name} original "
                                          f"{first:.6g}, rerun {again:.6g}, bound "
                                          f"{bounds[name]:.3g} ({bound_of})")
    return Verdict("within seed noise", f"within seed noise: every difference inside "
                                        f"{bound_of}")


def spreads(name: str, seeds: list[dict[str, dict[int, float]]]) -> list[float]:
    """max - min of a metric over the seeds at each epoch that two or more of them reached."""
    if len(seeds) < 2:
        return []
    by_epoch: dict[int, list[float]] = {}
    for seed in seeds:
        for epoch, value in seed.get(name, {}).items():
            by_epoch.setdefault(epoch, []).append(value)
    return [max(values) - min(values) for values in by_epoch.values() if len(values) > 1]


def likely_cause(original_tags: dict[str, str], rerun_tags: dict[str, str], params) -> str:
    recorded = sorted(key for key in {*original_tags, *rerun_tags} if key.startswith("env."))
    changed = [f"{key.removeprefix('env.')} {original_tags.get(key)} -> {rerun_tags.get(key)}"
               for key in recorded if original_tags.get(key) != rerun_tags.get(key)]
    if changed:
        return f"the environment ({', '.join(changed)})"
    if original_tags.get("device") != rerun_tags.get("device"):
        return f"the device ({original_tags.get('device')} -> {rerun_tags.get('device')})"
    if original_tags.get("device", "").startswith("cuda") and \
            params.get("trainer.deterministic") != "True":
        return "non-deterministic kernels (the run used CUDA without trainer.deterministic=true)"
    return ("nothing the record shows changed (code, data, environment, device): the "
            "original's record was changed after it ran, or training is not deterministic here")
