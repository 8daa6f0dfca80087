"""The one mean / standard deviation helper every summary here uses (reward spreads, score statistics,
pairwise metrics, seeds in a comparison)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def mean_std(values: Iterable[float | None], sample: bool = False) -> tuple[float, float]:
    """Mean and standard deviation of the finite numbers in `values` (None and NaN left out; (nan, nan)
    when none is left). Population std (divide by n) by default: the spread of these values themselves (a
    group's rewards, a model's scores). `sample=True` divides by n - 1: the spread of what these values
    sample, estimated from a few of them (a result over seeds). One value: std 0."""
    xs = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    mean = sum(xs) / len(xs)
    dof = len(xs) - 1 if sample else len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / dof) if dof > 0 else 0.0
