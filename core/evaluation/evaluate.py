"""ROC / threshold explorer: scored test sets, precomputed curves, operating points, rules, decision records."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.detectors import registry as detectors
from core.errors import ConfigError

if TYPE_CHECKING:
    pass
from collections.abc import Mapping

from core.data.images import save_png
from core.detectors.fnet_distance import FNetDetector, is_fnet_run, load_fnet
from core.device import resolve_device
from core.evaluation import metrics
from core.evaluation.curves import (
    Costs,
    apply_rule,
    check_rule_options,
    curves_for,
    summary,
)
from core.evaluation.scored import (
    default_detector,
    load_test_split,
    score_split,
    scored_set,
    scores_csv,
)
from core.labels.effective import relabel_scored
from core.runs import METRICS_FILE, SCORES_FILE, load_run
from core.viz import result_strip
from core.workspace import atomic_write_json, atomic_write_text


def evaluate_fnet_run(run_dir: Path | str, *, device: str = "auto", strips: bool = True, batch_size: int = 32) -> dict[str, Any]:
    """Image-level metrics of the distance to C on the run's test split; writes ``metrics.json`` and ``scores.csv``.

    Same keys as :func:`core.evaluate.evaluate_run`; ``pixel_auroc`` and ``aupro`` are None (F does not
    localize) and no strips are written (``strips`` is accepted for the common signature).
    """

    dev = resolve_device(device)
    run = load_fnet(run_dir, dev)
    index, split = load_test_split(run)
    if len(split) == 0:
        raise ConfigError(f"the test split of {run.config.data} has no readable image")
    scored = score_split(FNetDetector(run.model), split, batch_size=batch_size, device=dev)
    result = metrics.summarize(scored.scores, split.labels)
    result.update(
        run_id=run.id, model=run.config.model, data=run.config.data, category=run.config.category, epoch=run.epoch,
        score_mode="fnet_distance", heatmap_vmax=None, n_skipped=len(split.skipped), skipped=split.skipped,
    )
    atomic_write_json(Path(run_dir) / METRICS_FILE, result)
    atomic_write_text(Path(run_dir) / SCORES_FILE, scores_csv(scored, index.root))
    return result


def evaluate_any(run_dir: Path | str, *, device: str = "auto", strips: bool = True) -> dict[str, Any]:
    """:func:`evaluate_fnet_run` for f-Net runs, :func:`core.evaluate.evaluate_run` for the others."""
    if is_fnet_run(run_dir):
        return evaluate_fnet_run(run_dir, device=device, strips=strips)

    return evaluate_run(run_dir, device=device, strips=strips)










def evaluate_run(run_dir: Path | str, *, device: str = "auto", strips: bool = True, batch_size: int = 32) -> dict[str, Any]:
    """Score the test split of a run and write ``metrics.json``, ``scores.csv`` and ``strips/``.

    Returns:
        The metrics dict (also written to ``metrics.json``).

    Raises:
        core.runs.RunError: for an unusable run; ValueError for data problems.
    """
    dev = resolve_device(device)
    run = load_run(run_dir, dev)
    index, split = load_test_split(run)
    if len(split) == 0:
        raise ConfigError(f"the test split of {run.config.data} has no readable image")
    scored = score_split(detectors.build(run), split, batch_size=batch_size, device=dev)
    result = scored.summary()
    vmax = float(np.quantile(scored.maps, 0.999)) if scored.maps.size else 1.0
    result.update(
        run_id=run.id,
        model=run.config.model,
        data=run.config.data,
        category=run.config.category,
        epoch=run.epoch,
        score_mode=run.config.score_mode,
        heatmap_vmax=vmax,
        n_skipped=len(split.skipped),
        skipped=split.skipped,
    )
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / METRICS_FILE, result)
    atomic_write_text(run_dir / SCORES_FILE, scores_csv(scored, index.root))
    if strips and scored.reconstructions is not None:
        for k, s in enumerate(split.samples):
            img = result_strip(scored.split.images[k].numpy() / 255.0, scored.reconstructions[k], scored.maps[k], vmax)
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
    if rule is not None:
        costs = Costs(cost_fp, cost_fn, cost_review or 0.0) if cost_fp is not None and cost_fn is not None else None
        res = apply_rule(c, rule, target_fpr=target_fpr, target_tpr=target_tpr, costs=costs)
        res.pop("preset", None)
        for k in ("n", "n_pos", "n_neg"):
            res.pop(k, None)
        out["f1_max_threshold"] = out.get("threshold")
        out.update(res)
    return out
