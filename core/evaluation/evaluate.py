"""Evaluating a run: from the one scored set of a detector (:func:`core.evaluation.scored.scored_set`) to
its metrics (:func:`core.evaluation.curves.summary`), the run folder's ``metrics.json`` / ``scores.csv`` /
``strips/``, and the operating point a threshold rule picks.

``python -m core evaluate``, the Results and Threshold pages and the training jobs all read the same cached
scored set and the same summary, so a number is the same wherever it is shown.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.data.images import save_png
from core.data.report import mask_census
from core.detectors.reconstruction import reconstructions
from core.device import resolve_device
from core.evaluation.curves import (
    Costs,
    apply_rule,
    check_rule_options,
    curves_for,
    operating_point,
    summary,
)
from core.evaluation.operating import (
    decision_warnings,
    point_or_default,
    resolve_threshold,
)
from core.evaluation.scored import (
    ScoredSet,
    default_detector,
    load_test_split,
    scored_set,
)
from core.labels.effective import relabel_scored
from core.runs import METRICS_FILE, SCORES_FILE, load_run
from core.training import distributed
from core.viz import heatmap_vmax, result_strip
from core.workspace import atomic_write_json, atomic_write_text, csv_cell_out


def scores_csv(ss: ScoredSet) -> str:
    """Per-image scores as CSV text: path (relative to the data root), defect, label (1 / 0 / -1 unknown), score, has_mask."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "defect", "label", "score", "has_mask"])
    known = ss.has_mask if ss.has_mask is not None else [False] * len(ss)
    for path, defect, label, score, has in zip(ss.paths, ss.defects, ss.labels, ss.scores, known):
        writer.writerow([csv_cell_out(path), csv_cell_out(defect), int(label), f"{float(score):.6g}", int(bool(has))])
    return buf.getvalue()


def evaluate_run(run_dir: Path | str, *, device: str = "auto", strips: bool = True, batch_size: int | None = None) -> dict[str, Any]:
    """Score the test split of a run with its own detector and write ``metrics.json``, ``scores.csv`` and ``strips/``.

    Works for every kind of run: the reconstruction error of an AE / VAE / U-Net run, the distance to C of an
    f-Net run (``pixel_auroc`` and ``aupro`` are None: F does not localize, and no strips are written).

    Returns:
        The metrics dict (also written to ``metrics.json``): :func:`core.evaluation.curves.summary`'s keys
        plus ``run_id``, ``model``, ``data``, ``category``, ``epoch``, ``detector``, ``score_mode``,
        ``heatmap_vmax``, ``n_skipped``, ``skipped``, ``n_nonbinary_masks`` and ``data_warnings``.

    Raises:
        core.errors.AnomalyLabError: an unusable run or data.
    """
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    run = load_run(run_dir, dev)
    ss = scored_set(run_dir, "auto", device=str(dev), batch_size=batch_size)
    index, split = load_test_split(run)
    result = summary(ss)
    result.update(
        run_id=run.id, model=run.config.model, data=run.config.data, category=run.config.category, epoch=run.epoch,
        detector=ss.detector, score_mode=ss.meta.get("score_mode"),
        heatmap_vmax=heatmap_vmax(ss.maps) if ss.maps is not None else None,
        n_skipped=len(split.skipped), skipped=split.skipped,
    )
    masks = mask_census(split.samples, Path(index.root))
    result.update(n_nonbinary_masks=masks.non_binary, data_warnings=(
        [f"{masks.non_binary} of {masks.binary + masks.non_binary} masks are not binary (values between their two "
         f"levels, e.g. {masks.non_binary_files[0][0]}): a pixel counts as defect above 127"] if masks.non_binary else []))
    if not distributed.is_main():  # under torchrun rank 0 writes the files; the others scored their shares
        return result
    atomic_write_json(run_dir / METRICS_FILE, result)
    atomic_write_text(run_dir / SCORES_FILE, scores_csv(ss))
    recons = reconstructions(run.model, split.images) if strips and ss.maps is not None else None
    if recons is not None:
        for k, s in enumerate(split.samples):
            img = result_strip(split.images[k].numpy() / 255.0, recons[k].transpose(2, 0, 1) / 255.0,
                               ss.maps[k].astype("float32"), result["heatmap_vmax"])
            save_png(run_dir / "strips" / s.defect / f"{s.path.stem}.png", img)
    return result


def evaluate_with_rule(
    run_dir: Path | str,
    base: Mapping[str, Any],
    *,
    detector: str = "auto",
    settings: Mapping[str, Any] | None = None,
    device: str = "cpu",
    rule: str | None = None,
    target_fpr: float | None = None,
    target_tpr: float | None = None,
    cost_fp: float | None = None,
    cost_fn: float | None = None,
    cost_review: float | None = None,
    labels: str = "dataset",
) -> dict[str, Any]:
    """``evaluate``'s result dict extended with the operating point a rule picks.

    ``labels`` (``dataset``, ``mine`` or ``merged``) takes the labels from the label store
    (:func:`core.labels.relabel_scored`): every metric is then recomputed with them, and
    ``label_source``, ``n_unknown`` and ``label_disagreements`` are added.

    Every key of ``base`` stays. Added: ``detector``, ``image_auroc_ci``; with a rule: ``rule``,
    ``threshold`` (the chosen one; ``f1_max_threshold`` keeps the F1-max one), the rule's parameters
    and the :func:`operating_point` keys (``tp``, ``fp``, ``tn``, ``fn``, ``tpr``, ``fpr``, ``tnr``,
    ``fnr``, ``precision``, ``recall``, ``f1``, ``accuracy``, ``flagged``, ``cost_per_1000``). For a
    detector other than the run's own (``projection``), the image and pixel metrics are replaced by
    that detector's.
    """
    check_rule_options(rule, target_fpr=target_fpr, target_tpr=target_tpr, cost_fp=cost_fp, cost_fn=cost_fn,
                       cost_review=cost_review)
    ss = scored_set(run_dir, detector, settings=settings, device=device)
    out = dict(base)
    own = ss.detector == default_detector(run_dir) and not settings
    if labels != "dataset":

        ss, eff = relabel_scored(ss, labels)
        own = False  # the run's metrics.json used the dataset's labels: recompute
        out.update(label_source=labels, label_disagreements=eff.disagreements)
    c = curves_for(ss)
    if not own:
        out.update(summary(ss, c))
    out.update(detector=ss.detector, image_auroc_ci=list(c.auroc_ci) if c.auroc_ci else None)
    if rule == "saved":  # the operating point the pages use, resolved on the same scored set
        point = point_or_default(run_dir, ss.detector)
        t, why = resolve_threshold(point, c)
        res = operating_point(c, t, point.costs)
        for k in ("n", "n_pos", "n_neg"):
            res.pop(k, None)
        out["f1_max_threshold"] = out.get("threshold")
        out.update(res, rule=point.rule, operating_point={**point.to_dict(), "threshold_used": t, "note_on_rule": why},
                   warnings=decision_warnings(operating_point(c, t, point.costs)),
                   target_fpr=point.target_fpr if point.rule == "fpr" else None,
                   target_tpr=point.target_tpr if point.rule == "tpr" else None,
                   cost_fp=point.cost_fp, cost_fn=point.cost_fn, cost_review=point.cost_review)
        return out
    if rule is not None:
        costs = Costs(cost_fp, cost_fn, cost_review or 0.0) if cost_fp is not None and cost_fn is not None else None
        res = apply_rule(c, rule, target_fpr=target_fpr, target_tpr=target_tpr, costs=costs)
        res.pop("preset", None)
        for k in ("n", "n_pos", "n_neg"):
            res.pop(k, None)
        out["f1_max_threshold"] = out.get("threshold")
        out.update(res)
    return out
