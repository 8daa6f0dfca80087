"""Datasets for every recipe: RL rows and preference pairs, from files, downloaded dataset folders,
hub datasets or presets, mapped to the project's schema and checked row by row.

- `read.py`: raw rows from wherever they live, one at a time;
- `rows.py`: one row from its own schema to the project's (column mapping, images, `<image>`
  markers, message-list responses), checked;
- `presets.py`: the paper's preference sets and common RL sets by name;
- `load.py`: streaming the good rows into memory-mapped Datasets, reports, mixtures.
"""

from rl.data.load import (
    Source,
    ValidationReport,
    features_for,
    load_preference_mixture,
    load_rl_splits,
    load_rows,
    load_source,
    rows_without_answer,
    validate_source,
)
from rl.data.read import DataError, RowError, iter_rows

__all__ = [
    "DataError",
    "RowError",
    "Source",
    "ValidationReport",
    "features_for",
    "iter_rows",
    "load_preference_mixture",
    "load_rl_splits",
    "load_rows",
    "load_source",
    "rows_without_answer",
    "validate_source",
]
