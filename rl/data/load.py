"""Datasets for the recipes, built as a stream: rows are read, mapped and checked one at a time and
written to an Arrow file on disk (memory-mapped afterwards), so a 2-million-pair mixture is never
held in memory; images stay paths or bytes there and are decoded when a batch needs them. Bad rows
are reported as they are met (the first ones one by one, then counts) and either skipped or fatal
(`validation.on_bad_row`). Mixing sources by weight selects rows by index: nothing is copied."""

from __future__ import annotations

import atexit
import itertools
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Image, Sequence, Value

from rl.config import DataConfig, ValidationConfig
from rl.data.presets import preset
from rl.data.read import DataError, RowError, iter_rows
from rl.data.rows import FIELDS, validate_row

log = logging.getLogger(__name__)

MESSAGE_FEATURE = [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}]
KEEP_ERRORS = 1000  # row errors kept for the report (all are counted)
LOG_EACH = 20  # bad rows logged one by one before only counts are


def features_for(kind: str, extras: dict[str, Any] | None = None) -> Features:
    """The project's schema for `kind` rows, plus the extra scalar columns of the first good row."""
    base = {"prompt": MESSAGE_FEATURE, "images": Sequence(Image())}
    texts = {name: Value("string") for name in FIELDS[kind] if name not in base}
    types = {bool: "bool", int: "int64", float: "float64", str: "string"}
    return Features({**base, **texts, **{k: Value(types[type(v)]) for k, v in (extras or {}).items()}})


NAMED_ROWS = 10  # rows without an answer a summary names (then a count), like the errors it lists


@dataclass
class ValidationReport:
    source: str
    kind: str
    total: int = 0
    bad: int = 0
    errors: list[RowError] = field(default_factory=list)  # the first KEEP_ERRORS
    no_answer: int = 0  # RL rows without a ground truth: fine for model rewards, unscorable by rule/hybrid
    no_answer_rows: list[int] = field(default_factory=list)  # the first KEEP_ERRORS of them (row numbers as errors')

    @property
    def ok(self) -> int:
        return self.total - self.bad

    def add(self, error: RowError) -> None:
        self.bad += 1
        if len(self.errors) < KEEP_ERRORS:
            self.errors.append(error)
        if self.bad <= LOG_EACH:
            log.warning("%s: %s", self.source, error)

    def summary(self, limit: int = 20) -> str:
        lines = [f"{self.source}: {self.total} rows, {self.ok} valid, {self.bad} bad"]
        lines += [f"  {e}" for e in self.errors[:limit]]
        if self.bad > limit:
            lines.append(f"  ... and {self.bad - limit} more")
        if self.no_answer:
            shown = ", ".join(str(r) for r in self.no_answer_rows[:NAMED_ROWS])
            more = f" and {self.no_answer - NAMED_ROWS} more" if self.no_answer > NAMED_ROWS else ""
            lines.append(
                f"  warning: {self.no_answer} valid row(s) have no answer (row {shown}{more}): fine for a "
                f"model-only reward, but the rule and hybrid rewards cannot score them"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class Source:
    """A data source resolved: where it is, and how its rows map to the project's."""

    path: str
    split: str
    columns: dict[str, str]
    image_root: str | None
    transform: Any = None

    @classmethod
    def of(cls, cfg: Any, kind: str) -> Source:
        """From a source section (`source`, `split`, `preset`, `columns`, `image_root`)."""
        for name in cfg.columns:
            if name not in FIELDS[kind]:
                import difflib

                close = difflib.get_close_matches(name, FIELDS[kind], n=1)
                raise DataError(
                    f"columns: {name!r} is not a field of {kind} rows {FIELDS[kind]}"
                    f"{f'; did you mean {close[0]!r}?' if close else ''}"
                )
        if cfg.preset is None:
            return cls(cfg.source or "shapes", cfg.split or "train", dict(cfg.columns), cfg.image_root)
        p = preset(cfg.preset)
        if p.kind != kind:
            raise DataError(f"preset {cfg.preset!r} holds {p.kind} rows, not {kind} rows")
        if p.local_only and not cfg.source:
            raise DataError(f"preset {cfg.preset!r} ({p.hub_id}) is published as files to download: set {p.needs}")
        return cls(
            cfg.source or p.hub_id, cfg.split or p.split, {**p.columns, **cfg.columns}, cfg.image_root, p.transform
        )

    def base_dir(self) -> Path | None:
        """What relative image paths are relative to: image_root, else the data file's directory."""
        if self.image_root:
            return Path(self.image_root)
        path = Path(self.path)
        return path.parent if path.is_file() else path if path.is_dir() else None


def stream_rows(source: Source, kind: str, cfg: ValidationConfig, report: ValidationReport) -> Iterator[dict]:
    """The good rows of `source`, mapped and checked, one at a time; bad rows go to `report`."""
    base_dir, start = source.base_dir(), time.monotonic()
    for rownum, row in iter_rows(source.path, source.split):
        report.total += 1
        if report.total % 100_000 == 0:
            log.info(
                "%s: %d rows read (%d bad) in %.0fs", report.source, report.total, report.bad, time.monotonic() - start
            )
        if isinstance(row, RowError):
            report.add(row)
            continue
        try:
            if source.transform is not None:
                row = {**row, **source.transform(row)}
            good = validate_row(row, kind, base_dir, cfg, source.columns)
        except (ValueError, KeyError, TypeError) as e:
            report.add(RowError(rownum, str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"))
            continue
        if kind == "rl" and good["answer"] is None:
            report.no_answer += 1
            if len(report.no_answer_rows) < KEEP_ERRORS:
                report.no_answer_rows.append(rownum)
        yield good


def validate_source(
    source: Source | str, kind: str, cfg: ValidationConfig | None = None, split: str = "train"
) -> ValidationReport:
    """Check every row of a source, streaming; returns the report (nothing is kept)."""
    if kind not in FIELDS:
        raise DataError(f"unknown data kind {kind!r}; use one of {sorted(FIELDS)}")
    source = source if isinstance(source, Source) else Source(source, split, {}, None)
    report = ValidationReport(source.path, kind)
    for _ in stream_rows(source, kind, cfg or ValidationConfig(), report):
        pass
    return report


_WORKDIRS: list[str] = []


def _workdir() -> str:
    """A private folder for this process's Arrow files (removed when it exits)."""
    path = tempfile.mkdtemp(prefix="brl-data-")
    if not _WORKDIRS:
        atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True) for p in _WORKDIRS])
    _WORKDIRS.append(path)
    return path


def load_source(source: Source, kind: str, cfg: ValidationConfig) -> Dataset:
    """The good rows of `source` as a memory-mapped Dataset; bad rows are skipped and reported, or
    abort the load (`cfg.on_bad_row`)."""
    from datasets.arrow_writer import ArrowWriter

    if cfg.on_bad_row not in ("skip", "abort"):
        raise DataError(f"validation.on_bad_row must be 'skip' or 'abort', got {cfg.on_bad_row!r}")
    report = ValidationReport(source.path, kind)
    rows = stream_rows(source, kind, cfg, report)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{source.path}: no valid rows ({report.total} read)\n{report.summary()}")
    extras = {k: v for k, v in first.items() if k not in FIELDS[kind]}
    features = features_for(kind, extras)
    path = str(Path(_workdir()) / "rows.arrow")
    with ArrowWriter(features=features, path=path, writer_batch_size=256) as writer:
        for row in itertools.chain([first], rows):  # extras another row lacks are None; new ones are dropped
            writer.write(features.encode_example({k: row.get(k) for k in features}))
        writer.finalize()
    if report.bad:
        if cfg.on_bad_row == "abort":
            raise DataError(f"bad rows (validation.on_bad_row=abort):\n{report.summary()}")
        log.warning("skipped bad rows (validation.on_bad_row=skip):\n%s", report.summary())
    if report.no_answer:
        log.warning(
            "%s: %d of %d rows have no answer (the rule and hybrid rewards cannot score them)",
            source.path,
            report.no_answer,
            report.ok,
        )
    ds = Dataset.from_file(path)
    ds.info.description = report.summary()
    return ds


def load_rows(source: str, kind: str, cfg: ValidationConfig, split: str = "train") -> Dataset:
    """A plain file or hub dataset in the project's own schema."""
    return load_source(Source(source, split, {}, None), kind, cfg)


def load_rl_splits(cfg: DataConfig) -> tuple[Dataset, Dataset | None]:
    """Train and held-out RL datasets for a recipe's `data` section."""
    train_source = Source.of(cfg, "rl")
    if train_source.path == "shapes":
        from rl.tasks.shapes import TASKS, make_shapes_splits

        return make_shapes_splits(cfg.train_size, cfg.eval_size, cfg.seed, dict(cfg.tasks) if cfg.tasks else TASKS)
    train = load_source(train_source, "rl", cfg.validation)
    held_out = None
    if cfg.eval_source:
        from dataclasses import replace

        held_out = load_source(replace(train_source, path=cfg.eval_source, split=cfg.eval_split), "rl", cfg.validation)
    return train, held_out


def rows_without_answer(ds: Dataset) -> int:
    return sum(a is None for a in ds["answer"]) if "answer" in ds.column_names else 0


def _preference_source(cfg: Any, validation: ValidationConfig, size: int, seed: int) -> Dataset:
    source = Source.of(cfg, "preference")
    if source.path == "shapes":
        from rl.tasks.shapes import TASKS, make_preference_pairs

        tasks, kinds = getattr(cfg, "tasks", None), getattr(cfg, "kinds", None)
        return make_preference_pairs(
            size,
            seed,
            dict(tasks) if tasks else TASKS,
            dict(kinds) if kinds else None,
            getattr(cfg, "same_wording", False),
        )
    return load_source(source, "preference", validation)


def load_preference_mixture(cfg: Any) -> tuple[Dataset, Dataset | None]:
    """Train mixture of the configured preference sources (sampled by weight) and the eval set.

    `cfg` is an `rl.config.PreferenceDataConfig`. Columns are cut to the common four so multimodal
    and text-only sets mix (a text-only row has an empty `images` list); mixing and cutting select
    rows by index, so no source is copied."""
    from datasets import interleave_datasets

    if not cfg.sources:
        raise DataError("data.sources is empty: name at least one preference dataset")
    weights = [s.weight for s in cfg.sources]
    if any(w <= 0 for w in weights):
        raise DataError(f"data.sources[].weight must be > 0, got {weights}")
    features = features_for("preference")
    raw = [_preference_source(s, cfg.validation, s.size, s.seed) for s in cfg.sources]
    if all("rationale" in part.column_names for part in raw):  # a judge is trained to write it before its verdict
        features = Features({**features, "rationale": Value("string")})
    parts = []
    for part in raw:
        part = part.select_columns(list(features))
        parts.append(part if part.features == features else part.cast(features))
    seed = cfg.sources[0].seed
    if len(parts) == 1:
        train = parts[0]
    else:
        total = sum(weights)
        train = interleave_datasets(
            parts, probabilities=[w / total for w in weights], seed=seed, stopping_strategy="all_exhausted"
        )
    if cfg.total_size is not None:
        train = train.shuffle(seed=seed).select(range(min(cfg.total_size, len(train))))
    eval_set = None
    if cfg.eval_source:  # "shapes": a disjoint seed, so held-out scenes are new
        from types import SimpleNamespace

        eval_cfg = SimpleNamespace(
            source=cfg.eval_source, split=cfg.eval_split, preset=None, columns={}, image_root=None
        )
        eval_set = _preference_source(eval_cfg, cfg.validation, cfg.eval_size, seed + 1_000_003)
    return train, eval_set
