"""The operating point: the decision a user made for one run and detector, kept as data.

An :class:`OperatingPoint` holds how the image threshold is set (a rule and its parameters, or a manual
value), the costs, the pixel threshold and the label source it was chosen with. It is stored per run and
detector in the run folder (``operating_points.json``, written atomically) whenever the user changes it,
so every page, a reload, a server restart and the CLI resolve the same threshold from it
(:func:`resolve_threshold`). A run without a stored point uses :data:`DEFAULT_RULE` and its own pixel
default (pixel F1-max), never another run's values.

The default rule is Youden's J (max TPR - FPR): it weighs misses and false alarms by their *rates*, so it
does not drift to "flag everything" when the test set holds more defects than good parts, as F1-max does
(F1 counts only the defective class: flagging all 63 defects and 20 good bottles of the shared bottle
split scores F1 0.86, more than a weak detector's best partial threshold).

:func:`decision_warnings` names a degenerate decision (almost everything or almost nothing flagged, a
pixel threshold whose precision or recall is near zero); pages show them and the decision record keeps them.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.evaluation.curves import (
    PRESETS,
    RULES,
    Costs,
    Curves,
    apply_rule,
    choose_threshold,
)
from core.evaluation.pixel import pixel_curves
from core.workspace import atomic_write_json

OP_FILE = "operating_points.json"
OP_FORMAT = "anomalylab-operating-points/1"
DEFAULT_RULE = "youden"
LABEL_SOURCES = ("dataset", "mine", "merged")
# Rules a point can name: manual, the rules of choose_threshold and the presets.
POINT_RULES = ("manual", *RULES, *(f"preset:{p}" for p in PRESETS))
# A decision that flags at least / at most this share of the images is degenerate (a visible warning).
FLAG_ALL_SHARE = 0.95
FLAG_NONE_SHARE = 0.01
# A pixel threshold whose precision or recall is below this is at an extreme.
PIXEL_EXTREME = 0.05

_LOCK = threading.Lock()


@dataclass(frozen=True)
class OperatingPoint:
    """How the threshold of one run and detector is chosen (all fields JSON-plain).

    Attributes:
        rule: ``manual``, a rule of :func:`core.evaluation.curves.choose_threshold` or ``preset:<name>``.
        threshold: the manual threshold (only used when ``rule`` is ``manual``).
        target_fpr: the ``fpr`` rule's false-alarm budget (fraction).
        target_tpr: the ``tpr`` rule's detection target (fraction; miss rate = 1 - it).
        cost_fp, cost_fn, cost_review: per-part costs (expected cost, the ``cost`` rule).
        pixel_threshold: the pixel threshold; None = the run's own default (pixel F1-max).
        label_source: the labels the point was chosen with (``dataset``, ``mine``, ``merged``).
        note: who decided and why.
        updated_utc: when it was last saved ("" for a default point).
    """

    rule: str = DEFAULT_RULE
    threshold: float | None = None
    target_fpr: float = 0.05
    target_tpr: float = 0.95
    cost_fp: float = 1.0
    cost_fn: float = 10.0
    cost_review: float = 0.0
    pixel_threshold: float | None = None
    label_source: str = "dataset"
    note: str = ""
    updated_utc: str = ""

    def __post_init__(self) -> None:
        if self.rule not in POINT_RULES:
            raise ConfigError(f"operating point: rule must be one of {', '.join(POINT_RULES)}, got {self.rule!r}")
        for name in ("threshold", "pixel_threshold"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, _finite(v, name))
        if self.rule == "manual" and self.threshold is None:
            raise ConfigError("operating point: a manual rule needs a threshold")
        for name in ("target_fpr", "target_tpr"):
            v = _finite(getattr(self, name), name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"operating point: {name} must be in [0, 1], got {v}")
            object.__setattr__(self, name, v)
        Costs(self.cost_fp, self.cost_fn, self.cost_review)  # validates
        for name in ("cost_fp", "cost_fn", "cost_review"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.label_source not in LABEL_SOURCES:
            raise ConfigError(f"operating point: label_source must be one of {', '.join(LABEL_SOURCES)}, "
                              f"got {self.label_source!r}")
        object.__setattr__(self, "note", str(self.note or ""))

    # ------------------------------------------------------------------ views of the point
    @property
    def costs(self) -> Costs:
        return Costs(self.cost_fp, self.cost_fn, self.cost_review)

    @property
    def params(self) -> dict[str, Any]:
        """The rule parameters as :func:`rule_threshold` and the decision record take them."""
        return {"target_fpr": self.target_fpr, "target_tpr": self.target_tpr, "costs": self.costs}

    def decision(self) -> tuple:
        """What the decision is: every field but the time stamp and the label source it was made with (two
        points with equal decisions are the same choice)."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name not in ("updated_utc", "label_source"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> OperatingPoint:
        """From a stored dict, ignoring unknown keys; ConfigError on bad values."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"operating point must be an object, got {type(raw).__name__}")
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in names})
        except TypeError as exc:
            raise ConfigError(f"operating point: {exc}") from None


def _finite(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"operating point: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"operating point: {name} must be finite, got {value!r}")
    return v


# ---------------------------------------------------------------------- resolving the threshold
def rule_threshold(curves: Curves, rule: str, params: Mapping[str, Any]) -> float:
    """The threshold ``rule`` (``f1``, ``youden``, ``fpr``, ``tpr``, ``cost`` or ``preset:<name>``) picks on ``curves``.

    ``params``: ``target_fpr``, ``target_tpr`` and ``costs`` (:class:`Costs`). Raises ValueError when the
    rule cannot be applied.
    """
    if rule.startswith("preset:"):
        return float(apply_rule(curves, "f1", preset=rule.split(":", 1)[1])["threshold"])
    return choose_threshold(curves, rule, target_fpr=params["target_fpr"], target_tpr=params["target_tpr"],
                            costs=params["costs"])


def resolve_threshold(point: OperatingPoint, curves: Curves) -> tuple[float, str | None]:
    """The image threshold of ``point`` on ``curves`` and, when its rule cannot be applied there, why
    (then F1-max is used)."""
    if point.rule == "manual":
        return float(point.threshold), None  # type: ignore[arg-type]
    try:
        return rule_threshold(curves, point.rule, point.params), None
    except ValueError as exc:
        return float(curves.f1_threshold), f"{rule_title(point.rule)} cannot be applied here ({exc}); using F1-max"


RULE_TITLES = {
    "manual": "manual",
    "f1": "F1-max",
    "youden": "Youden J",
    "fpr": "target false-alarm rate",
    "tpr": "target miss rate",
    "cost": "minimum expected cost",
    **{f"preset:{k}": f"preset '{p.title}'" for k, p in PRESETS.items()},
}


def rule_title(rule: str) -> str:
    return RULE_TITLES.get(rule, rule)


def describe(point: OperatingPoint) -> str:
    """The operating point in words, e.g. ``the Youden J threshold of the default operating point`` or
    ``the manual threshold of the operating point saved 2026-12-01 15:04 UTC``."""
    how = rule_title(point.rule)
    if point.rule == "fpr":
        how += f" ({point.target_fpr:.1%})"
    elif point.rule == "tpr":
        how += f" ({1 - point.target_tpr:.1%})"
    if not point.updated_utc:
        return f"the {how} threshold of the default operating point"
    when = point.updated_utc.replace("T", " ").rstrip("Z")[:16]
    return f"the {how} threshold of the operating point saved {when} UTC"


# ---------------------------------------------------------------------- warnings
def decision_warnings(op: Mapping[str, Any], pixel: Mapping[str, Any] | None = None) -> list[str]:
    """Warnings for a degenerate decision: ``op`` is :func:`core.evaluation.curves.operating_point`'s dict,
    ``pixel`` :func:`core.evaluation.pixel.pixel_metrics`' (optional)."""
    out = []
    n, flagged = int(op.get("n") or 0), int(op.get("flagged") or 0)
    if n:
        share = flagged / n
        if share >= FLAG_ALL_SHARE:
            out.append(f"the threshold flags {flagged} of {n} images ({share:.0%}): nearly everything is rejected "
                       f"({int(op.get('fp') or 0)} of {int(op.get('n_neg') or 0)} good images are false alarms)")
        elif share <= FLAG_NONE_SHARE:
            out.append(f"the threshold flags {flagged} of {n} images ({share:.0%}): nearly nothing is caught "
                       f"({int(op.get('tp') or 0)} of {int(op.get('n_pos') or 0)} defects)")
    if pixel:
        p, r = pixel.get("precision"), pixel.get("recall")
        if p is not None and p < PIXEL_EXTREME:
            out.append(f"the pixel threshold's precision is {p:.3f}: almost every segmented pixel is normal "
                       f"(recall {r:.3f})")
        if r is not None and r < PIXEL_EXTREME:
            out.append(f"the pixel threshold's recall is {r:.3f}: almost no defect pixel is segmented")
    return out


# ---------------------------------------------------------------------- storage
def _path(run_dir: Path | str) -> Path:
    return Path(run_dir) / OP_FILE


def _read(run_dir: Path | str) -> dict[str, Any]:
    try:
        raw = json.loads(_path(run_dir).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a damaged file is treated as none (the next save rewrites it)
    points = raw.get("points") if isinstance(raw, dict) and raw.get("format") == OP_FORMAT else None
    return points if isinstance(points, dict) else {}


def load_point(run_dir: Path | str, detector: str) -> OperatingPoint | None:
    """The stored operating point of ``detector`` on the run, or None (none stored, or unreadable)."""
    raw = _read(run_dir).get(detector)
    if raw is None:
        return None
    try:
        return OperatingPoint.from_dict(raw)
    except ConfigError:
        return None


def point_or_default(run_dir: Path | str, detector: str) -> OperatingPoint:
    """The stored point, else the default (:data:`DEFAULT_RULE`, the run's own pixel default)."""
    return load_point(run_dir, detector) or OperatingPoint()


def save_point(run_dir: Path | str, detector: str, point: OperatingPoint, *, now: datetime | None = None) -> OperatingPoint:
    """Store ``point`` for ``detector`` (time-stamped; other detectors' points are kept) and return it."""
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    point = replace(point, updated_utc=stamp)
    with _LOCK:
        points = _read(run_dir)
        points[detector] = point.to_dict()
        atomic_write_json(_path(run_dir), {"format": OP_FORMAT, "points": points})
    return point


def clear_point(run_dir: Path | str, detector: str) -> None:
    """Forget the stored point of ``detector`` (back to the default)."""
    with _LOCK:
        points = _read(run_dir)
        if points.pop(detector, None) is not None:
            atomic_write_json(_path(run_dir), {"format": OP_FORMAT, "points": points})


def operating_threshold(run_dir: Path | str, detector: str, curves: Curves) -> tuple[float, OperatingPoint, str]:
    """The image threshold every page and command uses for ``detector`` on the run: the stored operating
    point resolved on ``curves`` (the default rule when none is stored), the point and a line naming it."""
    point = point_or_default(run_dir, detector)
    t, why = resolve_threshold(point, curves)
    return t, point, describe(point) + (f" ({why})" if why else "")


def pixel_operating_threshold(run_dir: Path | str, ss: Any) -> float | None:
    """The pixel threshold of the run's operating point for ``ss``'s detector: the saved one, else the run's
    own default (pixel F1-max); None without maps or masks."""
    point = load_point(run_dir, ss.detector)
    if point is not None and point.pixel_threshold is not None:
        return float(point.pixel_threshold)
    pc = pixel_curves(ss) if ss.maps is not None else None
    return None if pc is None else float(pc.f1_threshold)
