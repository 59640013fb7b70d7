"""The decision record: what was decided on a run (threshold, rule, costs, metrics, fingerprints), to JSON/CSV and
back, validated in one place, and checked against the data it is applied to."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
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
from core.evaluation.pixel import pixel_curves, pixel_metrics
from core.evaluation.scored import _F, _I, _S, ScoredSet

RECORD_FORMAT = "anomalylab-decision/1"


# (key, type, required); nested sections are flattened as "section.key" in CSV.
_TOP = [("format", _S, True), ("created_utc", _S, True), ("app_version", _S, False), ("run_id", _S, True),
        ("detector", _S, True), ("data", _S, False), ("category", _S, False), ("data_fingerprint", _S, True),
        ("label_fingerprint", _S, True), ("n_images", _I, True), ("n_defective", _I, True), ("n_good", _I, True),
        ("n_unknown", _I, False), ("threshold", _F, True), ("rule", _S, True), ("preset", _S, False), ("note", _S, False)]


_SECTIONS = {
    "rule_params": [("target_fpr", _F, False), ("target_tpr", _F, False)],
    "costs": [("cost_fp", _F, False), ("cost_fn", _F, False), ("cost_review", _F, False)],
    "metrics": [("tp", _I, True), ("fp", _I, True), ("tn", _I, True), ("fn", _I, True), ("tpr", _F, True),
                ("fpr", _F, True), ("tnr", _F, False), ("fnr", _F, False), ("precision", _F, True), ("recall", _F, True),
                ("f1", _F, True), ("accuracy", _F, True), ("cost_per_1000", _F, False)],
    "pixel": [("threshold", _F, False), ("threshold_used", _F, False), ("tp", _I, False), ("fp", _I, False),
              ("fn", _I, False), ("tn", _I, False), ("precision", _F, False), ("recall", _F, False), ("f1", _F, False),
              ("iou", _F, False), ("fpr", _F, False)],
}


RECORD_RULES = (*RULES, "manual")


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
) -> dict[str, Any]:
    """The choice of a threshold as a JSON-ready dict (validated; see :func:`record_from_json`).

    Args:
        ss: the scored set the choice was made on (run, detector, data, labels).
        threshold: the image threshold (flag iff ``score >= threshold``).
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
    rec = {
        "format": RECORD_FORMAT,
        "created_utc": (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "app_version": app_version or _app_version(), "run_id": ss.run_id, "detector": ss.detector,
        "data": ss.data or None, "category": ss.category or None, "data_fingerprint": ss.fingerprint_data(),
        "label_fingerprint": ss.fingerprint_labels(), "n_images": len(ss), "n_defective": ss.n_defective,
        "n_good": ss.n_good, "n_unknown": ss.n_unknown, "threshold": float(threshold), "rule": rule, "preset": preset,
        "note": note,
        "rule_params": {"target_fpr": target_fpr, "target_tpr": target_tpr},
        "costs": {"cost_fp": cc.cost_fp if cc else None, "cost_fn": cc.cost_fn if cc else None,
                  "cost_review": cc.cost_review if cc else None},
        "metrics": {k: op[k] for k, _, _ in _SECTIONS["metrics"]},
        "pixel": {k: pixel.get(k) for k, _, _ in _SECTIONS["pixel"]},
    }
    return _validate_record(rec)


def _coerce(value: Any, typ: str, where: str) -> Any:
    if value is None or (isinstance(value, str) and value.strip() == "" and typ != _S):
        return None
    if typ == _S:
        if not isinstance(value, str):
            raise ConfigError(f"decision record: {where} must be text, got {value!r}")
        return value if value != "" else None
    if isinstance(value, bool):
        raise ConfigError(f"decision record: {where} must be a number, got {value!r}")
    try:
        if typ == _I:
            f = float(value)
            if not f.is_integer():
                raise ValueError
            return int(f)
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"decision record: {where} must be {'an integer' if typ == _I else 'a number'}, got {value!r}") from None
    if not math.isfinite(f):
        raise ConfigError(f"decision record: {where} must be finite, got {value!r}")
    return f


def _validate_record(rec: Any) -> dict[str, Any]:
    if not isinstance(rec, Mapping):
        raise ConfigError("decision record: expected one JSON object")
    if rec.get("format") != RECORD_FORMAT:
        raise ConfigError(f"not a decision record (format {rec.get('format')!r}, expected {RECORD_FORMAT!r})")
    out: dict[str, Any] = {}
    for key, typ, req in _TOP:
        v = _coerce(rec.get(key), typ, f"'{key}'")
        if req and v is None:
            raise ConfigError(f"decision record: '{key}' is missing")
        out[key] = v
    for sec, spec in _SECTIONS.items():
        raw = rec.get(sec)
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"decision record: '{sec}' must be an object")
        out[sec] = {}
        for key, typ, req in spec:
            v = _coerce(raw.get(key), typ, f"'{sec}.{key}'")
            if req and v is None:
                raise ConfigError(f"decision record: '{sec}.{key}' is missing")
            out[sec][key] = v
    if out["rule"] not in RECORD_RULES:
        raise ConfigError(f"decision record: unknown rule {out['rule']!r} (expected one of {', '.join(RECORD_RULES)})")
    if out["preset"] is not None and out["preset"] not in PRESETS:
        raise ConfigError(f"decision record: unknown preset {out['preset']!r}")
    rp, cs = out["rule_params"], out["costs"]
    if out["rule"] == "fpr" and rp["target_fpr"] is None:
        raise ConfigError("decision record: rule 'fpr' without rule_params.target_fpr")
    if out["rule"] == "tpr" and rp["target_tpr"] is None:
        raise ConfigError("decision record: rule 'tpr' without rule_params.target_tpr")
    if out["rule"] == "cost" and (cs["cost_fp"] is None or cs["cost_fn"] is None):
        raise ConfigError("decision record: rule 'cost' without costs.cost_fp and costs.cost_fn")
    for k in ("target_fpr", "target_tpr"):
        if rp[k] is not None and not 0.0 <= rp[k] <= 1.0:
            raise ConfigError(f"decision record: rule_params.{k} must be in [0, 1], got {rp[k]}")
    for k, v in cs.items():
        if v is not None and v < 0:
            raise ConfigError(f"decision record: costs.{k} must be >= 0, got {v}")
    try:
        datetime.strptime(out["created_utc"], "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise ConfigError(f"decision record: created_utc must look like 2024-01-31T12:00:00Z, got {out['created_utc']!r}") from None
    return out


def _csv_columns() -> list[tuple[str, str, str | None]]:
    cols: list[tuple[str, str, str | None]] = [(k, t, None) for k, t, _ in _TOP]
    for sec, spec in _SECTIONS.items():
        cols += [(f"{sec}.{k}", t, sec) for k, t, _ in spec]
    return cols


def record_to_json(record: Mapping[str, Any]) -> str:
    """The record as indented JSON text (validated first)."""
    return json.dumps(_validate_record(record), indent=2) + "\n"


def record_to_csv(record: Mapping[str, Any]) -> str:
    """The record as CSV: one header row (flat keys, ``section.key`` for nested ones) and one data row."""
    rec = _validate_record(record)
    header, row = [], []
    for name, _, sec in _csv_columns():
        v = rec[sec][name.split(".", 1)[1]] if sec else rec[name]
        header.append(name)
        row.append("" if v is None else repr(v) if isinstance(v, float) else str(v))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerow(row)
    return buf.getvalue()


def _text(data: str | bytes) -> str:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("decision record: the file is not UTF-8 text") from None
    return data.lstrip("\ufeff")


def record_from_json(text: str | bytes) -> dict[str, Any]:
    """Parse and validate a JSON decision record (ValueError with the reason when malformed)."""
    try:
        obj = json.loads(_text(text))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"decision record is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return _validate_record(obj)


def record_from_csv(text: str | bytes) -> dict[str, Any]:
    """Parse and validate a CSV decision record (header + exactly one data row)."""
    try:
        rows = [r for r in csv.reader(io.StringIO(_text(text))) if any(cell.strip() for cell in r)]
    except csv.Error as exc:
        raise ConfigError(f"decision record is not valid CSV ({exc})") from None
    if len(rows) != 2:
        raise ConfigError(f"decision record CSV must have a header and exactly one data row, got {len(rows)} row(s)")
    header, values = rows
    if len(header) != len(values):
        raise ConfigError(f"decision record CSV: {len(header)} columns in the header but {len(values)} in the row")
    flat = dict(zip((h.strip() for h in header), values))
    known = {name for name, _, _ in _csv_columns()}
    unknown = [h for h in flat if h not in known]
    if "format" not in flat:
        raise ConfigError("decision record CSV has no 'format' column")
    rec: dict[str, Any] = {sec: {} for sec in _SECTIONS}
    for name, v in flat.items():
        if name in unknown:
            continue
        sec, _, key = name.partition(".")
        if key:
            rec[sec][key] = v if v != "" else None
        else:
            rec[name] = v if v != "" else None
    return _validate_record(rec)


def check_record(record: Mapping[str, Any], ss: ScoredSet) -> list[str]:
    """Why a record may not apply to this scored set: one message per mismatch (empty = it matches)."""
    rec = _validate_record(record)
    out = []
    if rec["run_id"] != ss.run_id:
        out.append(f"The record was made for run {rec['run_id']}; the current run is {ss.run_id}.")
    if rec["detector"] != ss.detector:
        out.append(f"The record was made with the {rec['detector']} detector; the current one is {ss.detector}.")
    if rec["data_fingerprint"] != ss.fingerprint_data():
        where = " / ".join(x for x in (rec.get("data"), rec.get("category")) if x)
        out.append(f"The record was made on different test images{f' ({where})' if where else ''}: "
                   f"{rec['n_images']} images then, {len(ss)} now.")
    elif rec["label_fingerprint"] != ss.fingerprint_labels():
        out.append(f"The record was made with different labels: {rec['n_defective']} defective, {rec['n_good']} good"
                   f"{', ' + str(rec['n_unknown']) + ' unknown' if rec.get('n_unknown') else ''} then; "
                   f"{ss.n_defective} defective, {ss.n_good} good{', ' + str(ss.n_unknown) + ' unknown' if ss.n_unknown else ''} now.")
    return out
