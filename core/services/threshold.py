"""What the Threshold page computes without Streamlit: which runs and detectors can be compared, the
threshold a rule picks, the decision record of a choice and the background scoring job.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.detectors import registry as detectors
from core.evaluation.curves import PRESETS, Costs, Curves
from core.evaluation.operating import rule_threshold  # noqa: F401  (re-exported: the pages' API)
from core.evaluation.record import DecisionRecord, decision_record
from core.evaluation.scored import ScoredSet, scored_set
from core.services.jobs import JobContext, WorkerTask

BACKGROUND_DETECTORS = ("projection", "anounet")  # scored in a background job (seconds to minutes), then cached


def gives_image_scores(summary: Mapping[str, Any]) -> bool:
    """A run summary (``core.runs.list_runs``-like dict) of a model whose test set can be scored per image."""
    model = str(summary["config"].get("model"))
    return bool(summary["has_model"]) and bool(detectors.supported(model)) and model != "unet"


def entry_options(runs: list[Mapping[str, Any]]) -> list[str]:
    """``run_id|detector`` for every run and each detector it supports."""
    return [f"{r['id']}|{spec.name}" for r in runs for spec in detectors.supported(str(r["config"].get("model")))]


def detector_title(name: str) -> str:
    """The registered title of a detector (the name itself when unknown)."""
    try:
        return detectors.get(name).title
    except ValueError:
        return name


def entry_label(entry: str, by_id: Mapping[str, Mapping[str, Any]]) -> str:
    """``MODEL · run id · detector title`` of a ``run_id|detector`` entry."""
    run_id, det = entry.split("|")
    model = by_id.get(run_id, {}).get("config", {}).get("model", "?").upper()
    return f"{model} · {run_id} · {detector_title(det)}"


def record_for(ss: ScoredSet, threshold: float, curves: Curves, rule: str, params: Mapping[str, Any],
               pixel_threshold: float | None = None, note: str | None = None) -> DecisionRecord:
    """The decision record of ``threshold`` chosen by ``rule`` (``manual``, a rule or ``preset:<name>``) with ``params``."""
    preset = rule.split(":", 1)[1] if rule.startswith("preset:") else None
    base = PRESETS[preset].rule if preset else rule
    costs: Costs = params["costs"]
    return decision_record(
        ss, threshold, curves=curves, rule=base, preset=preset,
        target_fpr=params["target_fpr"] if base == "fpr" else (PRESETS[preset].target_fpr if preset else None),
        target_tpr=params["target_tpr"] if base == "tpr" else (PRESETS[preset].target_tpr if preset else None),
        costs=costs, pixel_threshold=pixel_threshold if ss.maps is not None else None, note=note)


def scoring_task(run_dir: Path | str, detector: str) -> WorkerTask:
    """A job that scores the run's test split with ``detector`` into the run's cache (``RUN/scored/``, which every
    session and process reads); state ``done`` / ``total``."""
    return WorkerTask(_score, {"run_dir": str(run_dir), "detector": detector})


def _score(ctx: JobContext, run_dir: str, detector: str) -> dict[str, Any]:
    scored_set(run_dir, detector, progress=lambda i, n: ctx.update(done=i, total=n))
    return {}
