"""``python -m core anounet``: Ano-Unet over a run's test images (or files), with maps, metrics and a comparison run."""

from __future__ import annotations

import io
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import AnoUnetConfig
from core.data.images import read_image, resize, save_png, to_channels
from core.data.loading import LoadedSplit
from core.detectors.anounet import AnoUnet, ProgressFn
from core.detectors.fnet_distance import load_fnet
from core.device import resolve_device
from core.errors import ConfigError
from core.evaluation.curves import summary
from core.evaluation.projection import select_images
from core.evaluation.scored import ScoredSet, load_test_split, scored_set
from core.runs import load_run
from core.training import distributed
from core.training.warm_start import resolve_warm_start
from core.viz import heatmap, result_strip
from core.workspace import atomic_write_bytes, atomic_write_json


def _stratified(defects: list[str], limit: int) -> list[int]:
    """At most ``limit`` positions, taken round-robin over the defect types (each in its original order)."""
    groups: dict[str, list[int]] = {}
    for i, d in enumerate(defects):
        groups.setdefault(d, []).append(i)
    out: list[int] = []
    queues = [deque(v) for _, v in sorted(groups.items())]
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.popleft())
    return sorted(out)


def evaluate_anounet(
    fnet_run_dir: Path | str, cfg: AnoUnetConfig, *, images: list[str] | None = None, limit: int | None = None,
    out: Path | str | None = None, warm_start: str = "none", compare: Path | str | None = None, device: str = "auto",
    cache: bool = True, progress: ProgressFn | None = None, stop: threading.Event | None = None,
    warm_progress: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Run Ano-Unet on test images of an f-Net run's dataset (or on image files), write one map per image, measure.

    Args:
        fnet_run_dir: the f-Net run (F, C, the dataset, the image size).
        cfg: Ano-Unet settings.
        images: test images (paths absolute or relative to the category folder, or defect types) and/or
            other image files; default the whole test split.
        limit: at most this many images, spread evenly over the defect types.
        out: output folder; default ``<fnet run>/anounet/<time>``. Per image ``<defect>/<name>_map.png``
            (heatmap, one scale for all), ``<defect>/<name>_map.npy`` (the raw map) and
            ``<defect>/<name>_strip.png`` (input | G(x) | heatmap); ``anounet.json`` holds the summary.
        warm_start: ``none``, ``auto`` or a unet run (see :func:`resolve_warm_start`).
        compare: a reconstruction run (e.g. the AE) scored on the same test images.
        cache: reuse / store results in the workspace cache.

    Returns:
        A JSON-ready dict: ``pixel_auroc`` (None without masks), ``aupro``, ``image_auroc``,
        ``image_auroc_fnet`` (distance to C), ``seconds_per_image`` (wall time / images computed),
        ``memory_per_image_mb``, ``stop_reasons``, ``mean_epochs``, ``*_compare`` keys with ``compare``,
        counts, settings, ``out``, and ``images`` (one row per image).
    """

    cfg.validate()
    ctx = distributed.setup(resolve_device(device)) if distributed.launched() else None  # torchrun: shard the images
    dev = ctx.device if ctx is not None else resolve_device(device)
    run = load_fnet(fnet_run_dir, dev)
    fc = run.config
    index, split = load_test_split(run)
    picked: list[int] = []
    external: list[Path] = []
    for item in images or []:
        try:
            picked += [i for i in select_images(index.root, split, [item]) if i not in picked]
        except ValueError:
            if not Path(item).is_file():
                raise ConfigError(f"{item!r} is neither a test image of {index.root}, a defect type, nor an image file") from None
            external.append(Path(item))
    if not images:
        picked = list(range(len(split)))
    if limit is not None:
        picked = [picked[i] for i in _stratified([split.samples[i].defect for i in picked], limit)]
        external = external[: max(0, limit - len(picked))]
    sel = LoadedSplit(split.images[picked], [split.samples[i] for i in picked], split.masks[picked], split.has_mask[picked])
    ext_imgs = [to_channels(resize(to_channels(read_image(p), fc.channels), fc.size), fc.channels).transpose(2, 0, 1) for p in external]
    batch = torch.cat([sel.images, torch.from_numpy(np.stack(ext_imgs))]) if ext_imgs else sel.images
    if len(batch) == 0:
        raise ConfigError("no image selected")

    main = ctx is None or ctx.main
    if not main:  # rank 0 trains (or finds) the warm start first; the others then load the one it kept
        distributed.barrier(ctx)
    warm_state, warm_arch, warm_dir = resolve_warm_start(warm_start, fnet_run_dir, cfg, device=str(dev),
                                                         progress=warm_progress if main else None, stop=stop)
    if ctx is not None and main:
        distributed.barrier(ctx)
    ano = AnoUnet(run.model, cfg, warm_state=warm_state, warm_arch=warm_arch, device=dev, cache=cache)
    t0 = time.perf_counter()
    if ctx is None:
        results = ano.run(batch, progress=progress, stop=stop)
    else:  # each image's G is seeded by its content, so a rank's share gives the results one process gives
        part = ctx.shard(len(batch))
        mine = ano.run(batch[part], progress=progress if main else None, stop=stop)
        results = [r for piece in distributed.gather_objects(mine, ctx) for r in piece]
    seconds = time.perf_counter() - t0
    ok = [k for k in range(len(sel)) if results[k] is not None]
    # the comparison run is scored on every rank (scored_set shards it under torchrun), on the test images done
    compared = _compare(compare, fc, [sel.samples[k].relpath(Path(index.root)) for k in ok], dev) \
        if compare is not None else {}
    if not main:  # rank 0 writes the maps and the summary; this rank waits until it has
        distributed.barrier(ctx)
        return {"rank": ctx.rank, "n_done": sum(r is not None for r in results)}
    done = [r for r in results if r is not None]
    n_cached = sum(r.cached for r in done)
    n_test = len(sel)

    names = [f"{s.defect}/{s.path.stem}" for s in sel.samples] + [f"external/{p.stem}" for p in external]
    out_dir = Path(out) if out else Path(fnet_run_dir) / "anounet" / time.strftime("%Y%m%d-%H%M%S")
    maps = np.stack([r.anomaly_map if r is not None else np.zeros(batch.shape[-2:], np.float32) for r in results])
    vmax = float(np.quantile(maps, 0.999)) if maps.size else 1.0
    rows = []
    for k, (name, r) in enumerate(zip(names, results)):
        row: dict[str, Any] = {"name": name, "label": int(sel.samples[k].label) if k < n_test else None}
        if r is not None:
            buf = io.BytesIO()
            np.save(buf, r.anomaly_map)
            atomic_write_bytes(out_dir / f"{name}_map.npy", buf.getvalue())
            save_png(out_dir / f"{name}_map.png", heatmap(r.anomaly_map, 0.0, vmax))
            save_png(out_dir / f"{name}_strip.png", result_strip(batch[k].numpy() / 255.0, r.reconstruction, r.anomaly_map, vmax))
            row.update(score=r.score, epochs=r.epochs, stop_reason=r.stop_reason, cached=r.cached,
                       feature_distance_before=r.feature_distance_before, feature_distance_after=r.feature_distance_after)
        rows.append(row)

    ss = ScoredSet.from_split(  # the test images done, as the one result type; metrics from the one summary
        run.id, "anounet", sel.subset(ok), index.root, np.array([results[k].score for k in ok], np.float64),
        np.stack([results[k].anomaly_map for k in ok]) if ok else np.zeros((0, *batch.shape[-2:]), np.float32),
        data=fc.data, category=fc.category or index.category, meta={"settings": cfg.result_settings(), "seconds": seconds},
        extras={"feature_distance_before": np.array([results[k].feature_distance_before for k in ok], np.float64),
                "epochs": np.array([results[k].epochs for k in ok], np.int64)})
    m = summary(ss) if ok else {"image_auroc": None, "pixel_auroc": None, "aupro": None}
    fnet_m = summary(replace(ss, detector="fnet-distance", scores=ss.extras["feature_distance_before"], maps=None,
                             masks=None, has_mask=None), pixel=False) if ok else {"image_auroc": None}
    reasons: dict[str, int] = {}
    for r in done:
        reasons[r.stop_reason] = reasons.get(r.stop_reason, 0) + 1
    mem = ano.memory_per_image(int(batch.shape[-1]))
    result: dict[str, Any] = {
        "fnet_run": run.id, "data": fc.data, "category": fc.category, "size": fc.size,
        "beta": cfg.beta, "epochs": cfg.epochs, "batch": cfg.batch, "lr": cfg.lr, "early_stop": cfg.early_stop,
        "guard": cfg.guard, "precision": ano.precision, "device": str(dev), "warm_start": warm_start, "warm_start_run": warm_dir,
        "unet": asdict(ano.unet_cfg),
        "n_images": len(batch), "n_done": len(done), "n_cached": n_cached, "n_test_images": len(ss),
        "n_defective": ss.n_defective,
        "seconds": seconds, "seconds_per_image": seconds / max(1, len(done) - n_cached),  # images computed (cache hits excluded)
        "memory_per_image_mb": mem["bytes_per_image"] / 2**20, "memory_method": "estimate: 16 B/param (param, grad, Adam m, v) + autograd-saved activations of G and F for one image + image buffers",
        "stop_reasons": reasons,
        "mean_epochs": float(np.mean([r.epochs for r in done])) if done else None,
        "pixel_auroc": m["pixel_auroc"], "aupro": m["aupro"], "image_auroc": m["image_auroc"],
        "image_auroc_fnet": fnet_m["image_auroc"],
        "heatmap_vmax": vmax, "out": str(out_dir), "images": rows,
    }
    result.update(compared)
    atomic_write_json(out_dir / "anounet.json", result)
    distributed.barrier(ctx)  # under torchrun: the other ranks end once the files are written
    return result


def _compare(compare: Path | str, fc: Any, paths: list[str], device: torch.device) -> dict[str, Any]:
    """The ``*_compare`` keys: a reconstruction run scored on the same test images through the one evaluation path."""
    other = load_run(compare, device)
    oc = other.config
    if (oc.data, oc.category or "") != (fc.data, fc.category or ""):
        raise ConfigError(f"--compare {other.id} was trained on {oc.data} {oc.category or ''}, not on the f-Net's "
                          f"{fc.data} {fc.category or ''}: its maps are not comparable")
    base = {"compare_run": other.id, "compare_model": oc.model, "compare_size": oc.size}
    if not paths:
        return {**base, "pixel_auroc_compare": None, "aupro_compare": None, "image_auroc_compare": None}
    m = summary(scored_set(compare, "reconstruction", images=paths, device=str(device)))
    return {**base, "pixel_auroc_compare": m["pixel_auroc"], "aupro_compare": m["aupro"],
            "image_auroc_compare": m["image_auroc"]}
