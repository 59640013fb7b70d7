"""The review report: one self-contained HTML file a quality manager can forward (``python -m core report``,
and the "Download report" buttons of Threshold and Results make the same file).

:func:`report_data` gathers every number through the one evaluation path (the same scored set, curves and
saved operating point as ``evaluate --rule saved`` and the pages); :func:`render_html` lays it out with
plotly.js inlined once and images as data URIs, so the file opens offline; the decision record is embedded
as JSON (``<script type="application/json" id="anomalylab-decision-record">``) so that the Threshold page can
import the report itself and restore the decision. :func:`write_pdf` prints it with Chromium when present.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import platform
import shutil
import socket
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image
from plotly.offline import get_plotlyjs

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # optional: only the PDF needs it
    sync_playwright = None

from core.data.builtin import open_dataset
from core.data.report import data_report
from core.detectors import registry as detectors
from core.device import module_device, resolve_device
from core.errors import ConfigError
from core.evaluation.bootstrap import delong_paired, metric_intervals
from core.evaluation.curves import curves_for, false_negatives, false_positives, summary
from core.evaluation.evaluate import evaluate_with_rule
from core.evaluation.metrics import image_auroc
from core.evaluation.operating import (
    pixel_operating_threshold,
    point_or_default,
    rule_title,
)
from core.evaluation.record import RECORD_SCRIPT_ID
from core.evaluation.scored import ScoredSet, load_for, load_test_split, scored_set
from core.labels.effective import relabel_scored
from core.runs import BEST_CKPT, CONFIG_FILE, LoadedRun, read_history
from core.services.jobs import WorkerTask
from core.services.threshold import record_for
from core.viz import heatmap, heatmap_vmax, mask_contour, overlay, strip
from core.workspace import atomic_write_text

REPORT_FORMAT = "anomalylab-report/1"
GENERATOR = "AnomalyLab review report"  # marks a file this tool wrote: only such a file is ever replaced
THUMB = 128  # px: the side of each gallery image (readable, not the full image)
MAX_GALLERY = 60  # images per gallery (false alarms, misses); the rest are counted
TOP_DETECTIONS = 8
FEW_IMAGES = 30  # fewer labeled test images than this: a warning
FEW_PER_CLASS = 10
VIEW_DETECTORS = ("projection", "anounet")  # detectors whose [input | result | map] views are shown
N_VIEWS = 4
MODEL_KEYS = {"ae": ("ae_loss", "depth", "base_channels"), "vae": ("z_dim", "base_channels"), "unet": ("base_channels",),
              "fnet": ("backbone", "fnet_loss"), "patchcore": ("feature_backbone", "feature_layers", "coreset_ratio"),
              "padim": ("feature_backbone", "feature_layers", "padim_channels")}  # the settings that define each model


def _sha256(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def _model_section(run_dir: Path, run: LoadedRun, ss: ScoredSet) -> dict[str, Any]:
    hist = read_history(run_dir)
    epochs = hist.get("epochs") or []
    try:
        resolved = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8")).get("resolved", {})
    except (OSError, ValueError):
        resolved = {}
    cfg = asdict(run.config)
    return {
        "run_id": run.id, "model": run.config.model, "detector": ss.detector,
        "detector_title": detectors.get(ss.detector).title,
        "detector_settings": {k: v for k, v in (ss.meta.get("settings") or {}).items() if v is not None},
        "size": run.config.size, "status": hist.get("status"), "epochs_trained": len(epochs),
        "epochs_planned": run.config.epochs, "best_epoch": hist.get("best_epoch"),
        "train_seconds": float(sum(float(e.get("seconds") or 0.0) for e in epochs)),
        "checkpoint_sha256": _sha256(run_dir / BEST_CKPT), "trained_on": {
            "host": hist.get("host"), "device": resolved.get("device"), "precision": resolved.get("precision")},
        "scored_on": {"device": ss.meta.get("device"), "seconds": ss.meta.get("seconds")},
        "settings": {k: cfg[k] for k in ("epochs", "batch_size", "lr", "seed", *MODEL_KEYS.get(run.config.model, ()))
                     if cfg.get(k) not in (None, "")},
    }


def _per_defect(ss: ScoredSet, threshold: float) -> list[dict[str, Any]]:
    known = ss.known
    good = known & (ss.labels == 0)
    out = []
    for defect in sorted({d for d, y, k in zip(ss.defects, ss.labels, known) if k and y == 1}):
        sel = known & (ss.labels == 1) & (np.array(ss.defects) == defect)
        both = sel | good
        auroc = image_auroc(ss.scores[both], ss.labels[both]) if good.any() else None
        caught = int(np.count_nonzero(ss.scores[sel] >= threshold))
        out.append({"defect": defect, "n": int(sel.sum()), "auroc": auroc, "caught": caught,
                    "share_caught": caught / int(sel.sum())})
    return out


def _warnings(decision: dict[str, Any], ss: ScoredSet, labels: str, disagreements: int | None,
              data_warnings: list[str]) -> list[str]:
    out = list(decision.get("warnings") or [])
    if decision.get("operating_point", {}).get("note_on_rule"):
        out.append(decision["operating_point"]["note_on_rule"])
    n, pos, neg = ss.n_defective + ss.n_good, ss.n_defective, ss.n_good
    if pos == 0 or neg == 0:
        missing = " or ".join(w for w, k in (("defective", pos), ("good", neg)) if k == 0)
        out.append(f"No {missing} test image has a label here (labels: {labels}): the metrics and the decision cannot "
                   "be judged; label images on the Label page or use the dataset's labels.")
    elif n < FEW_IMAGES or pos < FEW_PER_CLASS or neg < FEW_PER_CLASS:
        out.append(f"Few test images ({pos} defective, {neg} good): one image more or less moves the detection "
                   f"rate by {100 / max(1, pos):.0f} and the false-alarm rate by {100 / max(1, neg):.0f} percentage "
                   "points; read the intervals below.")
    if disagreements:
        where = "are used here" if labels != "dataset" else "are not used here (labels: dataset folders)"
        out.append(f"{disagreements} hand label{'s' if disagreements != 1 else ''} disagree with the dataset "
                   f"folders; they {where}.")
    out += [w[0].upper() + w[1:] for w in data_warnings]
    return out


def _compare(run_dir: Path, ss: ScoredSet, compare: list[str], labels: str, device: str) -> list[dict[str, Any]]:
    out = []
    for other in compare:
        o_dir = Path(other)
        o_ss = scored_set(o_dir, "auto", device=device)
        if labels != "dataset":
            o_ss, _ = relabel_scored(o_ss, labels)
        common = [p for p in ss.paths if p in set(o_ss.paths)]
        entry: dict[str, Any] = {"run_id": o_ss.run_id, "detector": o_ss.detector,
                                 "detector_title": detectors.get(o_ss.detector).title, "data": o_ss.data,
                                 "category": o_ss.category, "n_common": len(common), "test": None}
        c = curves_for(o_ss)
        entry.update(image_auroc=c.auroc, image_auroc_ci=list(c.auroc_ci) if c.auroc_ci else None,
                     average_precision=c.average_precision, roc=(c.fpr.tolist(), c.tpr.tolist()),
                     pr=(c.recall[1:].tolist(), c.precision[1:].tolist()))
        if common:
            ia = np.array([ss.index_of(p) for p in common])
            ib = np.array([o_ss.index_of(p) for p in common])
            ya, yb = ss.labels[ia], o_ss.labels[ib]
            same = (ya == yb) & (ya >= 0)
            test = delong_paired(ss.scores[ia][same], o_ss.scores[ib][same], ya[same])
            if test is not None:
                entry["test"] = {**test, "method": "DeLong (paired, same images)", "n_images": int(same.sum())}
        out.append(entry)
    return out


def _jpeg_uri(img: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(img).convert("RGB").save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _thumb(img: np.ndarray) -> np.ndarray:
    """At most THUMB px on its long side; small images are enlarged by a whole factor (pixels stay sharp)."""
    h, w = img.shape[:2]
    if max(h, w) * 2 <= THUMB:
        k = THUMB // max(h, w)
        return np.repeat(np.repeat(img, k, axis=0), k, axis=1)
    if max(h, w) <= THUMB:
        return img
    s = THUMB / max(h, w)
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS))


def _rgb(chw_uint8: np.ndarray) -> np.ndarray:
    img = np.asarray(chw_uint8).transpose(1, 2, 0)
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def _tile(ss: ScoredSet, split, where: dict[str, int], i: int, vmax: float) -> dict[str, Any]:
    """One gallery entry: [image (mask outlined) | heatmap over the image], its score and names."""
    img = _rgb(split.images[where[ss.paths[i]]].numpy())
    panels = [img]
    if ss.masks is not None and ss.has_mask[i] and ss.masks[i].any():
        panels[0] = mask_contour(img, ss.masks[i], color=(0, 230, 64))
    if ss.maps is not None:
        panels.append(overlay(img, heatmap(ss.maps[i].astype(np.float32), 0.0, vmax)))
    return {"path": ss.paths[i], "defect": ss.defects[i], "score": float(ss.scores[i]),
            "image": _jpeg_uri(strip([_thumb(p) for p in panels], gap=3))}


def _galleries(run: LoadedRun, ss: ScoredSet, threshold: float) -> dict[str, Any]:
    index, split = load_test_split(run)
    where = {s.relpath(Path(index.root)): k for k, s in enumerate(split.samples)}  # scored path -> loaded image
    c = curves_for(ss)
    vmax = heatmap_vmax(ss.maps) if ss.maps is not None else 1.0
    fps = list(false_positives(c, threshold))
    fns = list(false_negatives(c, threshold))
    known = np.flatnonzero(ss.known & (ss.labels == 1) & (ss.scores >= threshold))
    top = list(known[np.argsort(-ss.scores[known])][:TOP_DETECTIONS])
    out = {
        "false_alarms": [_tile(ss, split, where, i, vmax) for i in fps[:MAX_GALLERY]], "n_false_alarms": len(fps),
        "misses": [_tile(ss, split, where, i, vmax) for i in fns[:MAX_GALLERY]], "n_misses": len(fns),
        "top_detections": [_tile(ss, split, where, i, vmax) for i in top], "heatmap_vmax": float(vmax), "views": [],
    }
    if ss.detector in VIEW_DETECTORS:
        out["views"] = _detector_views(run, ss, split, where)
    return out


def _detector_views(run: LoadedRun, ss: ScoredSet, split, where: dict[str, int]) -> list[dict[str, Any]]:
    """[input | result | map] of the highest-scored defective images and the lowest-scored good one."""
    spec = detectors.get(ss.detector)
    dev = module_device(run.model)
    det = detectors.build(run, spec.name, detectors.parse_settings(spec, ss.meta.get("settings") or {}), dev)
    pos = np.flatnonzero(ss.known & (ss.labels == 1))
    neg = np.flatnonzero(ss.known & (ss.labels == 0))
    chosen = list(pos[np.argsort(-ss.scores[pos])][: N_VIEWS - 1]) + list(neg[np.argsort(ss.scores[neg])][:1])
    ks = [where[ss.paths[i]] for i in chosen]
    x = split.images[ks].float().div(255.0).to(dev)
    with torch.no_grad():  # as score_split: the projection and Ano-Unet turn gradients on where they need them
        pred = det.predict(x)
    views = []
    maps = pred.anomaly_map.float().cpu().numpy()
    vmax = float(np.quantile(maps, 0.995)) or 1.0
    for j, i in enumerate(chosen):
        panels = [_rgb(split.images[ks[j]].numpy())]
        if pred.reconstruction is not None:
            rec = (pred.reconstruction[j].float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
            panels.append(_rgb(rec))
        panels.append(heatmap(maps[j], 0.0, vmax))
        views.append({"path": ss.paths[i], "defect": ss.defects[i], "score": float(ss.scores[i]),
                      "image": _jpeg_uri(strip([_thumb(p) for p in panels], gap=3))})
    return views


def report_data(run_dir: Path | str, *, detector: str = "auto", compare: list[str] | None = None,
                labels: str = "dataset", device: str = "cpu", n_boot: int = 1000, n_boot_pixel: int = 200,
                now: datetime | None = None) -> dict[str, Any]:
    """Every number of the report (JSON-ready, with the gallery images as data URIs)."""
    run_dir = Path(run_dir)
    ss = scored_set(run_dir, detector, device=device)
    eff = None
    if labels != "dataset":
        ss, eff = relabel_scored(ss, labels)
    else:
        try:
            _, eff = relabel_scored(ss, "merged")  # only to count the hand labels that differ
        except Exception:  # noqa: BLE001 - a label store that cannot be read must not stop a report
            eff = None
    c = curves_for(ss)
    base = summary(ss, c)
    decision = evaluate_with_rule(run_dir, base, detector=ss.detector, labels=labels, device=device, rule="saved")
    point = point_or_default(run_dir, ss.detector)
    threshold = float(decision["threshold"])
    px_t = pixel_operating_threshold(run_dir, ss)
    record = record_for(ss, threshold, c, point.rule, point.params, pixel_threshold=px_t, note=point.note)
    run = load_for(run_dir, detectors.get(ss.detector), resolve_device(device))
    index = open_dataset(ss.data, ss.category or None, seed=int(ss.meta.get("data_seed") or 0))
    drep = data_report(index)
    metrics = {k: base[k] for k in ("image_auroc", "average_precision", "pixel_auroc", "aupro", "f1_max")}
    intervals = metric_intervals(ss, n_boot=n_boot, n_boot_pixel=n_boot_pixel)
    disagreements = eff.disagreements if eff is not None else None
    out = {
        "format": REPORT_FORMAT,
        "created_utc": (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "decision": {
            "threshold": threshold, "rule": point.rule, "rule_title": rule_title(point.rule),
            "target_fpr": decision.get("target_fpr"), "target_tpr": decision.get("target_tpr"),
            "cost_fp": decision.get("cost_fp"), "cost_fn": decision.get("cost_fn"), "cost_review": decision.get("cost_review"),
            **{k: decision.get(k) for k in ("tp", "fp", "tn", "fn", "tpr", "fpr", "precision", "recall", "f1",
                                            "accuracy", "flagged", "cost_per_1000")},
            "pixel_threshold": px_t, "point_saved_utc": point.updated_utc,
        },
        "data": {"source": ss.data, "category": ss.category, "root": drep["root"], "layout": drep["layout"],
                 "counts": drep["counts"], "skipped": drep["skipped"], "test_skipped": int(ss.meta.get("n_skipped") or 0),
                 "label_source": labels, "n_hand_labels": eff.n_mine if eff is not None else None,
                 "label_disagreements": disagreements, "channels": drep["channels"], "masks": drep["masks"],
                 "n_images": len(ss), "n_defective": ss.n_defective, "n_good": ss.n_good, "n_unknown": ss.n_unknown},
        "model": _model_section(run_dir, run, ss),
        "metrics": metrics, "intervals": intervals,
        "per_defect": _per_defect(ss, threshold),
        "curves": {"roc": (c.fpr.tolist(), c.tpr.tolist()), "pr": (c.recall[1:].tolist(), c.precision[1:].tolist())},
        "compare": _compare(run_dir, ss, list(compare or []), labels, device),
        "galleries": _galleries(run, ss, threshold),
        "record": record.to_dict(),
    }
    out["warnings"] = _warnings(decision, ss, labels, disagreements, drep["warnings"])
    return out


# ----------------------------------------------------------------------------------------------- HTML
def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" <span class=ci>[{ci[0]:.3f}, {ci[1]:.3f}]</span>"


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _curve_figure(data: dict[str, Any], kind: str) -> go.Figure:
    d, model = data["decision"], data["model"]
    fig = go.Figure()
    x, y = data["curves"][kind]
    name = f"{model['run_id']} · {model['detector_title']}"
    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name, line={"width": 2.5}))
    for other in data["compare"]:
        ox, oy = other[kind]
        fig.add_trace(go.Scatter(x=ox, y=oy, mode="lines", name=f"{other['run_id']} · {other['detector_title']}",
                                 line={"width": 1.5, "dash": "dot"}))
    px, py = (d["fpr"], d["tpr"]) if kind == "roc" else (d["recall"], d["precision"])
    fig.add_trace(go.Scatter(x=[px], y=[py], mode="markers", name="the decision", marker={"size": 12, "symbol": "x",
                                                                                           "color": "#b3202e"}))
    fig.update_layout(width=520, height=400, margin={"l": 50, "r": 10, "t": 30, "b": 40}, template="plotly_white",
                      title={"text": "ROC" if kind == "roc" else "Precision-recall", "x": 0.02},
                      legend={"orientation": "h", "y": -0.25},
                      xaxis={"title": "false-alarm rate" if kind == "roc" else "recall (defects caught)", "range": [0, 1]},
                      yaxis={"title": "detection rate" if kind == "roc" else "precision", "range": [0, 1.02]})
    return fig


def _gallery_html(items: list[dict[str, Any]], total: int | None = None) -> str:
    if not items:
        return "<p class=muted>None.</p>"
    cells = "".join(f"<figure><img src='{it['image']}' alt='{_esc(it['path'])}'><figcaption>{_esc(it['path'])}"
                    f"<br>score {it['score']:.4g}</figcaption></figure>" for it in items)
    more = f"<p class=muted>and {total - len(items)} more (not shown, to keep the file small).</p>" \
        if total is not None and total > len(items) else ""
    return f"<div class=gallery>{cells}</div>{more}"


CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0 auto;max-width:1100px;padding:24px;
color:#1f2328;line-height:1.45}h1{margin-bottom:4px}h2{border-bottom:2px solid #b3202e;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d0d7de;padding:4px 10px;text-align:left}
th{background:#f6f8fa}.ci{color:#57606a;font-size:.9em}.muted{color:#57606a}.warn{background:#fff8c5;border:1px solid
#d4a72c;padding:8px 12px;border-radius:6px;margin:6px 0}.big{font-size:1.15em}.gallery{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;font-size:.8em;max-width:270px}figure img{display:block}.plots{display:flex;flex-wrap:wrap;gap:8px}
.plots>div{flex:0 0 520px}code{background:#f6f8fa;padding:1px 4px}@media print{h2{break-after:avoid}figure{break-inside:avoid}}
"""


def render_html(data: dict[str, Any]) -> str:
    """The report as one HTML document (plotly.js inline, images as data URIs, the record as embedded JSON)."""
    d, m, dat, model = data["decision"], data["metrics"], data["data"], data["model"]
    ci = data["intervals"]
    n = (d["tp"] or 0) + (d["fp"] or 0) + (d["tn"] or 0) + (d["fn"] or 0)
    pos, neg = (d["tp"] or 0) + (d["fn"] or 0), (d["fp"] or 0) + (d["tn"] or 0)
    costs = ("no costs were set" if d["cost_fp"] is None else
             f"a false alarm costs {d['cost_fp']:g}, a miss {d['cost_fn']:g}, a review {d['cost_review'] or 0:g}")
    rule = d["rule_title"] + (f" (target false-alarm rate {100 * d['target_fpr']:.1f}%)" if d.get("target_fpr") else "") + (
        f" (target detection rate {100 * d['target_tpr']:.1f}%)" if d.get("target_tpr") else "")
    cost_line = (f"Expected cost: <b>{d['cost_per_1000']:.1f} per 1,000 parts</b>." if d.get("cost_per_1000") is not None
                 else "Expected cost: not computed (no costs were set).")
    warnings = "".join(f"<div class=warn>⚠ {_esc(w)}</div>" for w in data["warnings"]) or "<p class=muted>No warnings.</p>"
    title = f"Anomaly detection review: {_esc(dat['source'])} / {_esc(dat['category'])}"
    per_defect = "".join(f"<tr><td>{_esc(r['defect'])}</td><td>{r['n']}</td><td>{_f(r['auroc'])}</td>"
                         f"<td>{r['caught']} of {r['n']} ({_pct(r['share_caught'])})</td></tr>" for r in data["per_defect"])
    counts = "".join(f"<tr><td>{_esc(split)}</td><td>{_esc(defect)}</td><td>{k}</td></tr>"
                     for split, per in dat["counts"].items() for defect, k in per.items())
    skipped = "".join(f"<li><code>{_esc(s['file'])}</code>: {_esc(s['reason'])}</li>" for s in dat["skipped"][:50])
    compare = ""
    for o in data["compare"]:
        t = o.get("test")
        test = (f"AUROC difference {t['difference']:+.3f} (this run {t['auroc_a']:.3f}, other {t['auroc_b']:.3f}; "
                f"{t['method']} on {t['n_images']} images): <b>p = {t['p_value']:.3g}</b>"
                f"{' — the difference is not significant at 5%' if t['p_value'] >= 0.05 else ''}") if t else \
            "no paired test: the runs share no labeled test images"
        compare += (f"<tr><td>{_esc(o['run_id'])} · {_esc(o['detector_title'])}</td><td>{_f(o['image_auroc'])}"
                    f"{_ci(o['image_auroc_ci'])}</td><td>{test}</td></tr>")
    compare_html = (f"<h3>Compared runs</h3><table><tr><th>run · detector</th><th>image AUROC</th><th>paired test "
                    f"against this run</th></tr>{compare}</table>") if compare else ""
    g = data["galleries"]
    views = ""
    if g["views"]:
        views = ("<h3>What the detector does: [input | result | map]</h3>" + _gallery_html(g["views"]))
    settings = ", ".join(f"{_esc(k)} = {_esc(v)}" for k, v in model["detector_settings"].items()) or "the defaults"
    record_json = json.dumps(data["record"], indent=1).replace("</", "<\\/")
    roc = _curve_figure(data, "roc").to_html(full_html=False, include_plotlyjs=False, config={"displayModeBar": False})
    pr = _curve_figure(data, "pr").to_html(full_html=False, include_plotlyjs=False, config={"displayModeBar": False})
    body = f"""
<h1>{title}</h1>
<p class=muted>Run <code>{_esc(model['run_id'])}</code> · detector {_esc(model['detector_title'])} · made
{_esc(data['created_utc'])} by AnomalyLab · {{SIZE}}</p>
<h2 id=decision>Decision</h2>
<p class=big>A part is flagged as defective when its anomaly score is at least <b>{d['threshold']:.6g}</b>
(rule: {_esc(rule)}; {costs}).</p>
<p class=big>On the {n} labeled test images this flags <b>{d['tp'] + d['fp']} ({_pct((d['tp'] + d['fp']) / n if n else None)})</b>,
catches <b>{d['tp']} of {pos} defective parts ({_pct(d['tpr'])})</b> and raises <b>{d['fp']} false alarm{'s' if d['fp'] != 1 else ''}
among {neg} good parts ({_pct(d['fpr'])})</b>. {cost_line}</p>
<h3>Warnings</h3>{warnings}
<h2 id=data>Data</h2>
<p>Source <code>{_esc(dat['source'])}</code>, category <b>{_esc(dat['category'])}</b> ({_esc(dat['layout'])} layout), folder
<code>{_esc(dat['root'])}</code>. Test images scored: {dat['n_images']} ({dat['n_defective']} defective, {dat['n_good']} good,
{dat['n_unknown']} without a label).</p>
<table><tr><th>split</th><th>defect type</th><th>images</th></tr>{counts}</table>
<p>Skipped files: {len(dat['skipped'])} by the index, {dat['test_skipped']} unreadable test images.</p>
{f'<ul>{skipped}</ul>' if skipped else ''}
<p>Labels: <b>{_esc({'dataset': 'the dataset folders', 'mine': 'my labels only', 'merged': 'my labels over the dataset folders'}.get(dat['label_source'], dat['label_source']))}</b>;
{_f(dat['n_hand_labels'])} hand labels in the label store, {_f(dat['label_disagreements'])} of them differ from the dataset.</p>
<p>Channels: {dat['channels']['train_color']} colour and {dat['channels']['train_gray']} gray training images (the run uses
{'RGB' if dat['channels']['run_channels'] == 3 else 'gray'}); masks: {dat['masks']['binary']} binary, {dat['masks']['non_binary']} non-binary.</p>
<h2 id=model>Model</h2>
<table>
<tr><th>detector</th><td>{_esc(model['detector_title'])} (<code>{_esc(model['detector'])}</code>), settings: {settings}</td></tr>
<tr><th>model</th><td>{_esc(model['model'])} at {model['size']} px; {', '.join(f'{k.replace("_", " ")} {_esc(v)}' for k, v in model['settings'].items())}</td></tr>
<tr><th>training</th><td>{model['epochs_trained']} of {model['epochs_planned']} epochs (best {_f(model['best_epoch'])}),
{model['train_seconds']:.0f} s, status {_esc(model['status'])}</td></tr>
<tr><th>checkpoint</th><td>sha256 <code>{_esc(model['checkpoint_sha256'])}</code></td></tr>
<tr><th>trained on</th><td>host {_esc(model['trained_on']['host'])}, {_esc(model['trained_on']['device'])}, {_esc(model['trained_on']['precision'])}</td></tr>
<tr><th>report made on</th><td>{_esc(data['machine']['host'])}, {_esc(data['machine']['platform'])}, Python {_esc(data['machine']['python'])},
torch {_esc(data['machine']['torch'])}{', ' + _esc(data['machine']['cuda']) if data['machine']['cuda'] else ''}</td></tr>
</table>
<h2 id=metrics>Metrics</h2>
<p class=muted>95% intervals from a stratified bootstrap over the test images ({ci['n_boot']} resamples for the image metrics,
{ci['n_boot_pixel']} for the pixel metrics).</p>
<table><tr><th>metric</th><th>value [95% interval]</th></tr>
<tr><td>image AUROC</td><td>{_f(m['image_auroc'])}{_ci(ci['image_auroc'])}</td></tr>
<tr><td>average precision</td><td>{_f(m['average_precision'])}{_ci(ci['average_precision'])}</td></tr>
<tr><td>pixel AUROC</td><td>{_f(m['pixel_auroc'])}{_ci(ci['pixel_auroc'])}</td></tr>
<tr><td>AUPRO (FPR ≤ 30%)</td><td>{_f(m['aupro'])}{_ci(ci['aupro'])}</td></tr></table>
<h3>Per defect type</h3>
<table><tr><th>defect type</th><th>images</th><th>AUROC (against the good images)</th><th>caught at the decision</th></tr>{per_defect}</table>
<h2 id=curves>Curves</h2>
<div class=plots><div>{roc}</div><div>{pr}</div></div>
{compare_html}
<h2 id=confusion>Confusion matrix and galleries</h2>
<table><tr><th></th><th>flagged</th><th>passed</th></tr>
<tr><th>defective</th><td>{d['tp']} caught</td><td>{d['fn']} missed</td></tr>
<tr><th>good</th><td>{d['fp']} false alarms</td><td>{d['tn']} correct passes</td></tr></table>
<p class=muted>Each image: the test image (ground-truth outline in green) and its anomaly map over it (blue 0 to red
{g['heatmap_vmax']:.3g}, one scale for all).</p>
<h3>False alarms ({g['n_false_alarms']})</h3>{_gallery_html(g['false_alarms'], g['n_false_alarms'])}
<h3>Misses ({g['n_misses']})</h3>{_gallery_html(g['misses'], g['n_misses'])}
<h3>Top true detections</h3>{_gallery_html(g['top_detections'])}
{views}
<h2 id=record>Decision record</h2>
<p>Import this file on the Threshold page ("Import a decision record") to restore the decision. Data fingerprint
<code>{_esc(data['record']['data_fingerprint'])}</code>, label fingerprint <code>{_esc(data['record']['label_fingerprint'])}</code>.</p>
<script type="application/json" id="{RECORD_SCRIPT_ID}">{record_json}</script>
"""
    doc = (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><meta name=generator content='{GENERATOR}'>"
           f"<title>{title}</title>"
           f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style>"
           f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>{body}</body></html>")
    size = len(doc.encode("utf-8"))
    return doc.replace("{SIZE}", f"this file: {size / 1e6:.1f} MB (plotly.js {len(get_plotlyjs()) / 1e6:.1f} MB, "
                                 "images as thumbnails)", 1)


def chromium_path() -> str | None:
    """The Chromium that prints PDFs (``$PATH``'s chromium or chromium-browser), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def write_pdf(html_path: Path, pdf_path: Path) -> None:
    """Print ``html_path`` to ``pdf_path`` with headless Chromium (Playwright's ``page.pdf``).

    Raises:
        ConfigError: when Chromium or Playwright is not installed (saying how to get them).
    """
    exe = chromium_path()
    if exe is None:
        raise ConfigError("a PDF needs Chromium: install it (e.g. `apt-get install -y chromium`); the HTML report "
                          "was written and prints from any browser")
    if sync_playwright is None:
        raise ConfigError("a PDF needs Playwright: `pip install playwright`; the HTML report was written")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(Path(html_path).resolve().as_uri(), wait_until="load")
            tmp = pdf_path.with_name(pdf_path.name + ".part")
            page.pdf(path=str(tmp), format="A4", print_background=True,
                     margin={"top": "12mm", "bottom": "12mm", "left": "10mm", "right": "10mm"})
            tmp.replace(pdf_path)
        finally:
            browser.close()


def check_replaceable(out: Path) -> None:
    """Refuse to write over anything but an earlier report (exports never overwrite what they did not create)."""
    if out.is_dir():
        raise ConfigError(f"{out} is a folder; give a file name ending in .html")
    if out.exists():
        try:
            with open(out, "rb") as f:
                head = f.read(4096).decode("utf-8", "replace")
        except OSError as exc:
            raise ConfigError(f"{out} exists and cannot be read ({exc.strerror or exc}); choose another name") from None
        if GENERATOR not in head:
            raise ConfigError(f"{out} exists and is not an AnomalyLab report; it is not replaced (choose another name)")


def write_report(run_dir: Path | str, out: Path | str, *, pdf: bool = False, **kw: Any) -> dict[str, Any]:
    """Make the report of ``run_dir`` (``report_data``'s keywords) and write it atomically to ``out`` (HTML);
    with ``pdf``, also ``out`` with ``.pdf``. Returns ``path``, ``bytes``, ``pdf`` (path or None) and ``data``."""
    out = Path(out)
    check_replaceable(out)
    data = report_data(run_dir, **kw)
    doc = render_html(data)
    atomic_write_text(out, doc)
    out.chmod(0o644)  # a file to forward: readable like any download (atomic writes start private)
    result = {"path": str(out), "bytes": len(doc.encode("utf-8")), "pdf": None, "data": data}
    if pdf:
        pdf_path = out.with_suffix(".pdf")
        write_pdf(out, pdf_path)
        result["pdf"] = str(pdf_path)
    return result


# ----------------------------------------------------------------------------- reports kept in the run folder
REPORTS_DIR = "reports"


def stored_report_path(run_dir: Path | str, detector: str, labels: str = "dataset") -> Path:
    """Where the app keeps a run's report for ``detector`` and ``labels`` (every session sees it)."""
    return Path(run_dir) / REPORTS_DIR / f"report-{detector}-{labels}.html"


def _point_key(run_dir: Path | str, detector: str) -> list[Any]:
    """The saved decision a stored report was made for (as JSON: a list)."""
    return json.loads(json.dumps(point_or_default(run_dir, detector).decision()))


def stored_report(run_dir: Path | str, detector: str, labels: str = "dataset") -> dict[str, Any] | None:
    """The stored report when it was made for the operating point saved now (else None: make it again):
    ``path``, ``bytes``, ``created_utc``."""
    path = stored_report_path(run_dir, detector, labels)
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        size = path.stat().st_size
    except (OSError, ValueError):
        return None
    if meta.get("point") != _point_key(run_dir, detector):
        return None
    pdf = path.with_suffix(".pdf")
    return {"path": str(path), "bytes": size, "created_utc": meta.get("created_utc"),
            "pdf": str(pdf) if meta.get("pdf") and pdf.is_file() else None, "pdf_note": meta.get("pdf_note")}


def report_task(run_dir: Path | str, detector: str, labels: str = "dataset", device: str = "cpu") -> WorkerTask:
    """A job that writes the run's report into its folder (:func:`stored_report_path`) for the saved operating
    point; its result is :func:`stored_report`'s dict."""
    return WorkerTask(_report, {"run_dir": str(run_dir), "detector": detector, "labels": labels, "device": device})


def _report(ctx: Any, run_dir: str, detector: str, labels: str, device: str) -> dict[str, Any]:
    ctx.update(phase="scoring and measuring")
    path = stored_report_path(run_dir, detector, labels)
    point = _point_key(run_dir, detector)  # the point the report is made for (it may change meanwhile)
    res = write_report(run_dir, path, detector=detector, labels=labels, device=device)
    meta = {"point": point, "created_utc": res["data"]["created_utc"], "bytes": res["bytes"], "pdf": False,
            "pdf_note": None}
    ctx.update(phase="printing the PDF")
    try:
        write_pdf(path, path.with_suffix(".pdf"))
        meta["pdf"] = True
    except ConfigError as exc:  # no Chromium on the server: the page says so
        meta["pdf_note"] = str(exc)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta))
    return stored_report(run_dir, detector, labels)
