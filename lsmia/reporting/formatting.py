"""The one way lsmia writes a number: a plain value, or a mean ± its 95 % interval, in tables, pages and consoles.

``decimals=None`` is the report's style (four significant digits; an interval to two significant digits with the
mean to the same decimal place); a number of decimals is the markdown tables' style (metric_registry's digits).
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "—"
SIGNIFICANT = 4  # digits of a plain value without fixed decimals
INTERVAL_SIGNIFICANT = 2  # digits of an interval without fixed decimals
MAX_DECIMALS = 8
TABLE_DECIMALS = 3  # a markdown table's statistic unless its metric says otherwise

Stat = dict[str, Any]  # {"mean", "ci95", "n", ...}: lsmia.reporting.stats.stat


def is_number(value: Any) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(value: Any, decimals: int | None = None, missing: str = MISSING) -> str:
    """``value`` to ``decimals`` decimals or (None) four significant digits; ``missing`` for no finite number."""
    if not is_number(value) or not math.isfinite(value):
        return missing
    return f"{value:.{decimals}f}" if decimals is not None else f"{value:.{SIGNIFICANT}g}"


def mean_ci(mean: float, ci: float, decimals: int | None = None) -> str:
    """``mean ± ci``: both to ``decimals`` decimals, or (None) the interval to two significant digits and the mean
    to the same decimal place (an interval of exactly 0 as ``± 0``); the mean alone without a finite interval."""
    if not math.isfinite(mean) or not math.isfinite(ci):
        return number(mean, decimals)
    if decimals is None:
        if ci == 0.0:
            return f"{number(mean)} ± 0"
        decimals = min(MAX_DECIMALS, max(0, INTERVAL_SIGNIFICANT - 1 - math.floor(math.log10(ci))))
    return f"{mean:.{decimals}f} ± {ci:.{decimals}f}"


def stat_text(found: Stat | None, decimals: int | None = TABLE_DECIMALS) -> str:
    """A ``{"mean", "ci95"}`` statistic as :func:`mean_ci`; ``—`` for none."""
    return MISSING if found is None else mean_ci(found["mean"], found["ci95"], decimals)


def cell(value: Any, none: str = "") -> str:
    """A cell of a table of mixed values: a float as :func:`number` (NaN and infinities as Python writes them),
    ``none`` for None, anything else as ``str``."""
    if isinstance(value, float):
        return number(value, missing=str(value))
    return none if value is None else str(value)
