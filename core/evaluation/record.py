"""The decision record: what was decided on a run (threshold, rule, costs, metrics, fingerprints), to JSON/CSV and
back, and checked against the data it is applied to.

:class:`DecisionRecord` is a frozen dataclass whose ``__post_init__`` is the one place a record is validated: every
way to make one (from a scored set, JSON, CSV or keyword arguments) goes through it. The field types are the schema
(``int``, ``float``, ``str``; ``X | None`` = optional), so there is no second table to keep in step.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import core
from core.errors import ConfigError
from core.evaluation.curves import (
    PRESETS,
    RULES,
    Costs,
    Curves,
    curves_for,
    operating_point,
)
from core.evaluation.operating import decision_warnings
from core.evaluation.pixel import pixel_curves, pixel_metrics
from core.evaluation.scored import ScoredSet
from core.workspace import csv_cell_in, csv_cell_out

RECORD_SCRIPT_ID = "anomalylab-decision-record"  # the <script> of a review report that holds its record
RECORD_FORMAT = "anomalylab-decision/1"
RECORD_RULES = (*RULES, "manual")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@functools.cache
def _schema(cls: type) -> tuple[tuple[str, type, bool], ...]:
    """(name, base type, required) of each field of a record dataclass, from its type hints."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else ()
        base = next(a for a in args if a is not type(None)) if args else hint
        out.append((f.name, base, not args))
    return tuple(out)


def _coerce(value: Any, typ: type, where: str) -> Any:
    """``value`` as ``typ`` (str, int or float), ``None`` for empty; ConfigError naming ``where`` otherwise."""
    if value is None or (isinstance(value, str) and value.strip() == "" and typ is not str):
        return None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"decision record: {where} must be text, got {value!r}")
        return value if value != "" else None
    if isinstance(value, bool):
        raise ConfigError(f"decision record: {where} must be a number, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        kind = "an integer" if typ is int else "a number"
        raise ConfigError(f"decision record: {where} must be {kind}, got {value!r}") from None
    if not math.isfinite(f):
        raise ConfigError(f"decision record: {where} must be finite, got {value!r}")
    if typ is int:
        if not f.is_integer():
            raise ConfigError(f"decision record: {where} must be an integer, got {value!r}")
        return int(f)
    return f


class _Section:
    """Coerces and checks every field on construction (fields typed str / int / float, optional or not)."""

    _prefix = ""

    def __post_init__(self) -> None:
        for name, typ, required in _schema(type(self)):
            where = f"'{self._prefix}{name}'"
            raw = getattr(self, name)
            if dataclasses.is_dataclass(typ):
                if raw is None:
                    raw = {}
                if isinstance(raw, Mapping):
                    raw = typ(**_known(typ, raw))
                elif not isinstance(raw, typ):
                    raise ConfigError(f"decision record: {where} must be an object")
                value = raw
            else:
                value = _coerce(raw, typ, where)
                if required and value is None:
                    raise ConfigError(f"decision record: {where} is missing")
            object.__setattr__(self, name, value)
        for f in dataclasses.fields(self):
            if "range" not in f.metadata:
                continue
            lo, hi = f.metadata["range"]
            v = getattr(self, f.name)
            if v is not None and not lo <= v <= hi:
                bound = f"in [{lo:g}, {hi:g}]" if math.isfinite(hi) else f">= {lo:g}"
                raise ConfigError(f"decision record: {self._prefix}{f.name} must be {bound}, got {v}")
        self._check()

    def _check(self) -> None:
        """Rules across fields (none by default)."""


def _known(cls: type, raw: Mapping) -> dict[str, Any]:
    """Every field of ``cls`` from ``raw`` (missing ones as None, so that validation names them; others dropped)."""
    return {f.name: raw.get(f.name) for f in dataclasses.fields(cls)}


def _bounded(lo: float, hi: float = math.inf, *, required: bool = False) -> Any:
    """A number field that must lie in [lo, hi] (checked by :class:`_Section`); optional (None) unless ``required``."""
    meta = {"range": (lo, hi)}
    return field(metadata=meta) if required else field(default=None, metadata=meta)


def _count(required: bool = False) -> Any:
    return _bounded(0, required=required)


def _rate(required: bool = False) -> Any:
    return _bounded(0.0, 1.0, required=required)


@dataclass(frozen=True, kw_only=True)
class RuleParams(_Section):
    """The targets of the ``fpr`` / ``tpr`` rules (fractions in [0, 1])."""

    _prefix = "rule_params."
    target_fpr: float | None = _bounded(0.0, 1.0)
    target_tpr: float | None = _bounded(0.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class RecordCosts(_Section):
    """The costs of a false alarm, a miss and a review (each >= 0)."""

    _prefix = "costs."
    cost_fp: float | None = _bounded(0.0)
    cost_fn: float | None = _bounded(0.0)
    cost_review: float | None = _bounded(0.0)


@dataclass(frozen=True, kw_only=True)
class RecordMetrics(_Section):
    """The confusion counts and rates at the threshold."""

    _prefix = "metrics."
    tp: int = _count(True)
    fp: int = _count(True)
    tn: int = _count(True)
    fn: int = _count(True)
    tpr: float = _rate(True)
    fpr: float = _rate(True)
    tnr: float | None = _rate()
    fnr: float | None = _rate()
    precision: float = _rate(True)
    recall: float = _rate(True)
    f1: float = _rate(True)
    accuracy: float = _rate(True)
    cost_per_1000: float | None = _bounded(0.0)


@dataclass(frozen=True, kw_only=True)
class PixelDecision(_Section):
    """The pixel threshold and the pixel metrics there (all optional: image-level detectors have none)."""

    _prefix = "pixel."
    threshold: float | None = None
    threshold_used: float | None = None
    tp: int | None = _count()
    fp: int | None = _count()
    fn: int | None = _count()
    tn: int | None = _count()
    precision: float | None = _rate()
    recall: float | None = _rate()
    f1: float | None = _rate()
    iou: float | None = _rate()
    fpr: float | None = _rate()


@dataclass(frozen=True, kw_only=True)
class DecisionRecord(_Section):
    """One decision on one run and detector; nested sections are flattened as ``section.key`` in CSV."""

    format: str = RECORD_FORMAT
    created_utc: str
    app_version: str | None = None
    run_id: str
    detector: str
    data: str | None = None
    category: str | None = None
    data_fingerprint: str
    label_fingerprint: str
    n_images: int = _count(True)
    n_defective: int = _count(True)
    n_good: int = _count(True)
    n_unknown: int | None = _count()
    threshold: float
    rule: str
    preset: str | None = None
    note: str | None = None
    warnings: str | None = None  # a degenerate decision, in words ("; "-separated; core.evaluation.operating)
    rule_params: RuleParams = field(default_factory=RuleParams)
    costs: RecordCosts = field(default_factory=RecordCosts)
    metrics: RecordMetrics
    pixel: PixelDecision = field(default_factory=PixelDecision)

    def __post_init__(self) -> None:
        if self.format != RECORD_FORMAT:  # before the fields: a foreign file says so, not "'run_id' is missing"
            raise ConfigError(f"not a decision record (format {self.format!r}, expected {RECORD_FORMAT!r})")
        super().__post_init__()

    def _check(self) -> None:
        if self.rule not in RECORD_RULES:
            raise ConfigError(f"decision record: unknown rule {self.rule!r} (expected one of {', '.join(RECORD_RULES)})")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"decision record: unknown preset {self.preset!r}")
        if self.rule == "fpr" and self.rule_params.target_fpr is None:
            raise ConfigError("decision record: rule 'fpr' without rule_params.target_fpr")
        if self.rule == "tpr" and self.rule_params.target_tpr is None:
            raise ConfigError("decision record: rule 'tpr' without rule_params.target_tpr")
        if self.rule == "cost" and (self.costs.cost_fp is None or self.costs.cost_fn is None):
            raise ConfigError("decision record: rule 'cost' without costs.cost_fp and costs.cost_fn")
        try:
            datetime.strptime(self.created_utc, _TIME_FORMAT)
        except ValueError:
            raise ConfigError(f"decision record: created_utc must look like 2024-01-31T12:00:00Z, "
                              f"got {self.created_utc!r}") from None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, obj: Any) -> DecisionRecord:
        """A record from a parsed JSON object (unknown keys are ignored; ConfigError naming a bad or missing field)."""
        if not isinstance(obj, Mapping):
            raise ConfigError("decision record: expected one JSON object")
        return cls(**_known(cls, obj))

    @classmethod
    def from_json(cls, text: str | bytes) -> DecisionRecord:
        """Parse a JSON decision record (ConfigError with the reason when malformed)."""
        try:
            obj = json.loads(_text(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"decision record is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        return cls.from_dict(obj)

    @classmethod
    def from_html(cls, text: str | bytes) -> DecisionRecord:
        """The record embedded in a review report (``python -m core report``)."""
        m = re.search(r'<script type="application/json" id="' + RECORD_SCRIPT_ID + r'">(.*?)</script>', _text(text), re.S)
        if m is None:
            raise ConfigError("this HTML file holds no decision record (expected an AnomalyLab review report)")
        return cls.from_json(m.group(1))

    @classmethod
    def from_file(cls, name: str, data: str | bytes) -> DecisionRecord:
        """A record from an uploaded file: CSV, JSON, or a review report (HTML), by the name's suffix."""
        lower = name.lower()
        if lower.endswith(".csv"):
            return cls.from_csv(data)
        if lower.endswith((".html", ".htm")):
            return cls.from_html(data)
        return cls.from_json(data)

    @classmethod
    def from_csv(cls, text: str | bytes) -> DecisionRecord:
        """Parse a CSV decision record (a header and exactly one data row; unknown columns are ignored)."""
        try:
            rows = [r for r in csv.reader(io.StringIO(_text(text))) if any(cell.strip() for cell in r)]
        except csv.Error as exc:
            raise ConfigError(f"decision record is not valid CSV ({exc})") from None
        if len(rows) != 2:
            raise ConfigError(f"decision record CSV must have a header and exactly one data row, got {len(rows)} row(s)")
        header, values = rows
        if len(header) != len(values):
            raise ConfigError(f"decision record CSV: {len(header)} columns in the header but {len(values)} in the row")
        flat = dict(zip((h.strip() for h in header), (csv_cell_in(v) for v in values)))
        if "format" not in flat:
            raise ConfigError("decision record CSV has no 'format' column")
        sections = {name for name, typ, _ in _schema(cls) if dataclasses.is_dataclass(typ)}
        obj: dict[str, Any] = {sec: {} for sec in sections}
        for name, v in flat.items():
            sec, _, key = name.partition(".")
            if key and sec in sections:
                obj[sec][key] = v if v != "" else None
            elif not key:
                obj[name] = v if v != "" else None
        return cls.from_dict(obj)

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (nested sections as objects)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Indented JSON text."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        """One header row (flat keys, ``section.key`` for nested ones) and one data row."""
        header, row = [], []
        for name, value in _flat(self):
            header.append(name)
            row.append("" if value is None else repr(value) if isinstance(value, float) else
                       csv_cell_out(value) if isinstance(value, str) else str(value))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow(header)
        w.writerow(row)
        return buf.getvalue()

    def check(self, ss: ScoredSet) -> list[str]:
        """Why this record may not apply to ``ss``: one message per mismatch (empty = it matches)."""
        out = []
        if self.run_id != ss.run_id:
            out.append(f"The record was made for run {self.run_id}; the current run is {ss.run_id}.")
        if self.detector != ss.detector:
            out.append(f"The record was made with the {self.detector} detector; the current one is {ss.detector}.")
        if self.data_fingerprint != ss.fingerprint_data():
            where = " / ".join(x for x in (self.data, self.category) if x)
            out.append(f"The record was made on different test images{f' ({where})' if where else ''}: "
                       f"{self.n_images} images then, {len(ss)} now.")
        elif self.label_fingerprint != ss.fingerprint_labels():
            then = _counts(self.n_defective, self.n_good, self.n_unknown)
            out.append(f"The record was made with different labels: {then} then; "
                       f"{_counts(ss.n_defective, ss.n_good, ss.n_unknown)} now.")
        return out


def _counts(defective: int, good: int, unknown: int | None) -> str:
    return f"{defective} defective, {good} good" + (f", {unknown} unknown" if unknown else "")


def _flat(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out += _flat(value, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", value))
    return out


def _text(data: str | bytes) -> str:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("decision record: the file is not UTF-8 text") from None
    return data.lstrip("\ufeff")


def _app_version() -> str | None:
    v = getattr(core, "__version__", None)
    if v:
        return str(v)
    try:
        from importlib.metadata import version

        return version("anomalylab")
    except Exception:  # not installed as a package
        return None


def decision_record(
    ss: ScoredSet,
    threshold: float,
    *,
    curves: Curves | None = None,
    rule: str = "manual",
    target_fpr: float | None = None,
    target_tpr: float | None = None,
    costs: Costs | Mapping | None = None,
    preset: str | None = None,
    pixel_threshold: float | None = None,
    note: str | None = None,
    app_version: str | None = None,
    now: datetime | None = None,
) -> DecisionRecord:
    """The choice of ``threshold`` (flag iff ``score >= threshold``) on ``ss`` as a :class:`DecisionRecord`.

    Args:
        ss: the scored set the choice was made on (run, detector, data, labels).
        rule: ``manual`` (slider, click, typed) or a rule of :func:`choose_threshold`.
        target_fpr, target_tpr, costs, preset: the rule's parameters (costs also give ``cost_per_1000``).
        pixel_threshold: optional pixel threshold; its metrics go to the ``pixel`` section.
    """
    c = curves or curves_for(ss)
    cc = Costs.coerce(costs)
    op = operating_point(c, threshold, cc)
    pixel: dict[str, Any] = {}
    if pixel_threshold is not None:
        pc = pixel_curves(ss)
        pixel = pixel_metrics(pc, pixel_threshold) if pc is not None else {"threshold": float(pixel_threshold)}
    warnings = decision_warnings(op, pixel if pixel_threshold is not None and "precision" in pixel else None)
    return DecisionRecord(
        created_utc=(now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime(_TIME_FORMAT),
        app_version=app_version or _app_version(), run_id=ss.run_id, detector=ss.detector,
        data=ss.data or None, category=ss.category or None, data_fingerprint=ss.fingerprint_data(),
        label_fingerprint=ss.fingerprint_labels(), n_images=len(ss), n_defective=ss.n_defective,
        n_good=ss.n_good, n_unknown=ss.n_unknown, threshold=float(threshold), rule=rule, preset=preset, note=note,
        warnings="; ".join(warnings) or None,
        rule_params=RuleParams(target_fpr=target_fpr, target_tpr=target_tpr),
        costs=RecordCosts(cost_fp=cc.cost_fp, cost_fn=cc.cost_fn, cost_review=cc.cost_review) if cc else RecordCosts(),
        metrics=RecordMetrics(**_known(RecordMetrics, op)),
        pixel=PixelDecision(**_known(PixelDecision, pixel)),
    )
