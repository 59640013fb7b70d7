"""ROC / threshold explorer: scored test sets, precomputed curves, operating points, rules, decision records.

The explorer page recomputes everything on every slider move, so the work is split in two:

* **once per run** (cached): :func:`scored_set` scores a run's test split with a detector and keeps
  scores, anomaly maps and masks in ``<run>/scored/<detector>[_<hash>].npz``; :func:`curves_for` and
  :func:`pixel_curves` turn a :class:`ScoredSet` into sorted arrays and cumulative counts (memoized
  in-process);
* **per threshold change** (O(log N) or O(bins)): :func:`operating_point`, :func:`iso_cost_line`,
  :func:`false_positives` / :func:`false_negatives` / :func:`closest_to_threshold` and
  :func:`pixel_metrics` read the precomputed arrays only.

Conventions are those of :mod:`core.metrics`: higher score = more anomalous, label 1 = defective (the
positive class), an image is flagged iff ``score >= threshold``, ``0 / 0 == 0``. Labels may also be
``-1`` (unknown: no label, "unsure", an unlabeled folder); such images are excluded from every metric
but appear in the "closest to the threshold" review list. ``core`` never imports streamlit.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from core import metrics
from core.data.index import UNLABELED_NAMES as _UNLABELED_FOLDERS  # images without a dataset label

__all__ = [
    "DETECTORS", "PRESETS", "RULES", "RECORD_FORMAT",
    "Costs", "Curves", "PixelCurves", "Preset", "ScoredSet",
    "apply_rule", "binary_segmentation", "build_curves", "build_pixel_curves", "check_record", "check_rule_options",
    "choose_threshold", "closest_to_threshold", "evaluate_with_rule",
    "curves_for", "decision_record", "default_detector", "expected_cost_per_1000", "false_negatives",
    "false_positives", "iso_cost_line", "nearest_point", "operating_point", "pixel_curves", "pixel_metrics",
    "record_from_csv", "record_from_json", "record_to_csv", "record_to_json", "scored_set", "scored_set_path",
    "segmentation_overlay", "summary",
]

DETECTORS = ("reconstruction", "projection", "fnet", "anounet")
FNET_DETECTORS = ("fnet", "anounet")  # detectors of an f-Net run
RULES = ("f1", "youden", "fpr", "tpr", "cost")
SCORED_DIR = "scored"
SCORED_FORMAT = "anomalylab-scored/1"
RECORD_FORMAT = "anomalylab-decision/1"


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _sha1(parts: Sequence[str]) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


# =========================================================================== #
# ScoredSet
# =========================================================================== #
@dataclass(frozen=True, eq=False)
class ScoredSet:
    """A detector's output over one test set, with the labels the metrics use.

    Arrays are read-only (the object is shared between sessions by the caches); derive a copy with
    :meth:`with_labels` or :func:`dataclasses.replace`.

    Attributes:
        run_id: the run folder name.
        detector: ``reconstruction``, ``projection``, ``fnet``, ... (whatever produced the scores).
        paths: image paths relative to the dataset's category folder (``test/broken/003.png``).
        defects: current defect type per image (``good``, the type, or ``unknown``).
        labels: int64 ``[N]``: 1 defective, 0 good, -1 unknown (excluded from metrics).
        scores: float64 ``[N]`` image scores (higher = more anomalous).
        maps: ``[N, H, W]`` float16/float32 anomaly maps, or None (e.g. the f-Net does not localize).
        masks: ``[N, H, W]`` bool ground-truth masks, or None.
        has_mask: bool ``[N]``: the image has pixel ground truth (a defect with a mask, or a good image).
        data, category: the dataset spec and category of the run.
        dataset_defects: the dataset's own defect folders (never replaced by :meth:`with_labels`); they,
            not the current labels, make :meth:`fingerprint_data`.
        meta: anything else (score mode, size, projection settings, ...).
    """

    run_id: str
    detector: str
    paths: tuple[str, ...]
    defects: tuple[str, ...]
    labels: np.ndarray
    scores: np.ndarray
    maps: np.ndarray | None = None
    masks: np.ndarray | None = None
    has_mask: np.ndarray | None = None
    data: str = ""
    category: str = ""
    dataset_defects: tuple[str, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        paths = tuple(str(p) for p in self.paths)
        n = len(paths)
        defects = tuple(str(d) for d in self.defects)
        if len(defects) != n:
            raise ValueError(f"{len(defects)} defects for {n} paths")
        labels = np.asarray(self.labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        labels = labels.astype(np.int64)
        if not np.isin(labels, (-1, 0, 1)).all():
            raise ValueError("labels must be 1 (defective), 0 (good) or -1 (unknown)")
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.shape != (n,):
            raise ValueError(f"scores must have shape ({n},), got {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("scores contain NaN or inf")
        maps = self.maps
        if maps is not None:
            maps = np.asarray(maps)
            if maps.dtype not in (np.float16, np.float32, np.float64) or maps.ndim != 3 or maps.shape[0] != n:
                raise ValueError(f"maps must be float [N={n}, H, W], got {maps.dtype} {maps.shape}")
        masks = self.masks
        if masks is not None:
            masks = np.asarray(masks).astype(bool, copy=False)
            if maps is None or masks.shape != maps.shape:
                raise ValueError("masks need maps of the same shape")
        has_mask = np.zeros(n, bool) if self.has_mask is None or masks is None else np.asarray(self.has_mask, dtype=bool)
        if has_mask.shape != (n,):
            raise ValueError(f"has_mask must have shape ({n},)")
        ds = tuple(str(d) for d in self.dataset_defects) if self.dataset_defects is not None else defects
        if len(ds) != n:
            raise ValueError("dataset_defects must have one entry per image")
        put("paths", paths)
        put("defects", defects)
        put("labels", _readonly(labels))
        put("scores", _readonly(scores))
        put("maps", _readonly(maps) if maps is not None else None)
        put("masks", _readonly(masks) if masks is not None else None)
        put("has_mask", _readonly(has_mask))
        put("dataset_defects", ds)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.paths)

    @property
    def known(self) -> np.ndarray:
        """bool ``[N]``: label is 0 or 1 (used by the metrics)."""
        return self.labels >= 0

    @property
    def n_defective(self) -> int:
        return int(np.count_nonzero(self.labels == 1))

    @property
    def n_good(self) -> int:
        return int(np.count_nonzero(self.labels == 0))

    @property
    def n_unknown(self) -> int:
        return int(np.count_nonzero(self.labels < 0))

    @property
    def pixel_known(self) -> np.ndarray:
        """bool ``[N]``: images entering pixel metrics (maps, pixel ground truth and a known label)."""
        if self.maps is None or self.masks is None:
            return np.zeros(len(self), bool)
        return self.has_mask & self.known

    def index_of(self, path: str) -> int:
        """Position of an image by relative path (ValueError when absent)."""
        idx = self._memo.get("index")
        if idx is None:
            idx = {p: i for i, p in enumerate(self.paths)}
            self._memo["index"] = idx
        try:
            return idx[path]
        except KeyError:
            raise ValueError(f"{path!r} is not an image of this set") from None

    # ------------------------------------------------------------ fingerprints
    def fingerprint_data(self) -> str:
        """sha1 of the sorted ``(path, dataset defect folder)`` pairs: which test images these are."""
        if "fp_data" not in self._memo:
            self._memo["fp_data"] = _sha1(sorted(f"{p}\t{d}" for p, d in zip(self.paths, self.dataset_defects)))
        return self._memo["fp_data"]

    def fingerprint_labels(self) -> str:
        """sha1 of the sorted ``path -> label`` pairs (-1 included): which labels the metrics used."""
        if "fp_labels" not in self._memo:
            self._memo["fp_labels"] = _sha1(sorted(f"{p}\t{int(y)}" for p, y in zip(self.paths, self.labels)))
        return self._memo["fp_labels"]

    def content_key(self) -> str:
        """sha1 of scores and labels (the key of the curve memo)."""
        if "content" not in self._memo:
            h = hashlib.sha1(self.scores.tobytes())
            h.update(self.labels.tobytes())
            self._memo["content"] = h.hexdigest()
        return self._memo["content"]

    # ---------------------------------------------------------------- relabel
    def with_labels(
        self,
        labels: Sequence[int] | np.ndarray | Mapping[str, int | str | None],
        defects: Sequence[str | None] | Mapping[str, str | None] | None = None,
        masks: Mapping[str, np.ndarray | None] | None = None,
    ) -> ScoredSet:
        """A copy with labels replaced (the label store overrides the ground truth this way).

        Args:
            labels: one label per image (1, 0, -1), or a mapping ``relative path -> label`` that
                overrides only the images it names (values 1/0/-1 or ``defective``/``good``/``unsure``;
                None keeps the current label). Unknown paths raise ValueError.
            defects: defect types, aligned or as a mapping; None entries keep or derive the type.
                Without one: an image relabeled good becomes ``good``, one relabeled defective from
                good becomes ``defective``, an unknown one ``unknown``.
            masks: optional ``relative path -> [H, W] bool`` painted masks (or None to drop one); an
                image given a mask gets pixel ground truth.

        Pixel ground truth follows the labels: an image relabeled good has an empty mask (known); an
        image relabeled defective whose mask is empty (e.g. formerly good) loses its pixel ground
        truth unless a mask is given.
        """
        n = len(self)
        new = self.labels.copy()
        if isinstance(labels, Mapping):
            for p, v in labels.items():
                if v is None:
                    continue
                new[self.index_of(p)] = _label_value(v)
        else:
            arr = np.asarray(labels)
            if arr.shape != (n,):
                raise ValueError(f"labels must have {n} entries, got shape {arr.shape}")
            new = np.array([_label_value(v) for v in arr.tolist()], dtype=np.int64)
        given: list[str | None] = [None] * n
        if isinstance(defects, Mapping):
            for p, d in defects.items():
                given[self.index_of(p)] = d
        elif defects is not None:
            if len(defects) != n:
                raise ValueError(f"defects must have {n} entries")
            given = list(defects)
        out_defects = []
        for i in range(n):
            old, y = int(self.labels[i]), int(new[i])
            d = given[i]
            if d is None:
                if y == 0:
                    d = "good"
                elif y == 1:
                    d = self.defects[i] if old == 1 and self.defects[i] != "good" else (
                        self.dataset_defects[i] if self.dataset_defects[i] not in ("good", *_UNLABELED_FOLDERS) else "defective")
                else:
                    d = "unknown"
            out_defects.append(str(d))
        new_masks, new_has = self.masks, self.has_mask.copy()
        if self.masks is not None:
            changed = np.flatnonzero(new != self.labels)
            to_good = [i for i in changed if new[i] == 0 and self.masks[i].any()]
            painted = dict(masks or {})
            if to_good or painted:
                new_masks = self.masks.copy()
            for i in to_good:
                new_masks[i] = False
            for i in changed:
                if new[i] == 0:
                    new_has[i] = True
                elif new[i] == 1 and not self.masks[i].any():
                    new_has[i] = False
            for p, m in painted.items():
                i = self.index_of(p)
                if m is None:
                    new_masks[i] = False
                    new_has[i] = new[i] == 0
                    continue
                m = np.asarray(m).astype(bool)
                if m.shape != new_masks.shape[1:]:
                    raise ValueError(f"mask of {p} has shape {m.shape}, expected {new_masks.shape[1:]}")
                new_masks[i] = m
                new_has[i] = True
        elif masks:
            raise ValueError("this set has no maps/masks to paint on")
        return replace(self, labels=new, defects=tuple(out_defects), masks=new_masks, has_mask=new_has)

    # ------------------------------------------------------------- builders
    @classmethod
    def from_split(cls, run_id: str, detector: str, split: Any, root: Path | str, scores: np.ndarray,
                   maps: np.ndarray | None = None, *, data: str = "", category: str = "",
                   meta: dict[str, Any] | None = None) -> ScoredSet:
        """Build from a :class:`core.data.loading.LoadedSplit` and a detector's scores / maps (any detector)."""
        root = Path(root)
        paths = [s.relpath(root) for s in split.samples]
        defects = [s.defect for s in split.samples]
        labels = [-1 if s.defect.lower() in _UNLABELED_FOLDERS else s.label for s in split.samples]
        masks = split.masks.numpy() if maps is not None else None
        return cls(run_id, detector, tuple(paths), tuple(defects), np.asarray(labels, np.int64),
                   np.asarray(scores, np.float64), maps, masks, np.asarray(split.has_mask, bool) if maps is not None else None,
                   data=data, category=category or "", meta=dict(meta or {}))


def _label_value(v: Any) -> int:
    if isinstance(v, str):
        key = v.strip().lower()
        table = {"good": 0, "defective": 1, "unsure": -1, "unknown": -1, "0": 0, "1": 1, "-1": -1}
        if key not in table:
            raise ValueError(f"unknown label {v!r}: use good, defective, unsure or 1 / 0 / -1")
        return table[key]
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise ValueError(f"unknown label {v!r}") from None
    if iv not in (-1, 0, 1) or iv != v:
        raise ValueError(f"unknown label {v!r}: use 1 (defective), 0 (good) or -1 (unknown)")
    return iv


# =========================================================================== #
# Building and caching a ScoredSet per run
# =========================================================================== #
_MEMO: OrderedDict[str, tuple[str, ScoredSet]] = OrderedDict()
_MEMO_MAX = 8
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock_for(key: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def _run_config(run_dir: Path) -> dict[str, Any]:
    from core.runs import CONFIG_FILE, RunError, read_json

    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run folder")
    cfg = read_json(run_dir / CONFIG_FILE).get("config")
    if not isinstance(cfg, dict):
        raise RunError(f"{run_dir / CONFIG_FILE} has no config")
    return cfg


def default_detector(run_dir: Path | str) -> str:
    """``fnet`` for an f-Net run, else ``reconstruction``."""
    try:
        return "fnet" if _run_config(Path(run_dir)).get("model") == "fnet" else "reconstruction"
    except ValueError:
        return "reconstruction"


def _resolve_detector(detector: str, cfg: dict[str, Any], run_dir: Path) -> str:
    model = cfg.get("model")
    if detector == "auto":
        return "fnet" if model == "fnet" else "reconstruction"
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)} (or auto), got {detector!r}")
    if (model == "fnet") != (detector in FNET_DETECTORS):
        raise ValueError(f"{run_dir.name} is an f-Net run: use detector fnet or anounet" if model == "fnet" else
                         f"{run_dir.name} is a reconstruction run ({model}): use detector reconstruction or projection")
    return detector


def _projection_cfg(projection_config: Any) -> Any:
    from core.projection import ProjectionConfig

    if projection_config is None:
        return ProjectionConfig()
    if isinstance(projection_config, Mapping):
        return ProjectionConfig(**projection_config)
    return projection_config


def scored_set_path(run_dir: Path | str, detector: str = "reconstruction", projection_config: Any = None) -> Path:
    """Where :func:`scored_set` caches: ``<run>/scored/<detector>.npz``, ``projection_<cfg sha1[:10]>.npz``."""
    name = detector
    if detector == "projection":
        cfg = _projection_cfg(projection_config)
        cfg.validate()
        name += "_" + hashlib.sha1(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return Path(run_dir) / SCORED_DIR / f"{name}.npz"


def _cache_key(run_dir: Path, detector: str, pcfg: Any, index: Any) -> str:
    """sha1 over what decides the scores: detector, projection settings, checkpoint identity, test files."""
    from core.runs import BEST_CKPT, RunError

    ckpt = run_dir / BEST_CKPT
    try:
        st = ckpt.stat()
    except OSError:
        raise RunError(f"checkpoint {ckpt} is missing") from None
    parts = [SCORED_FORMAT, detector, json.dumps(asdict(pcfg), sort_keys=True) if pcfg is not None else "",
             f"ckpt|{st.st_size}|{st.st_mtime_ns}"]
    root = Path(index.root)
    for s in index.split("test"):
        for p in (s.path, s.mask_path):
            if p is None:
                parts.append("-")
                continue
            try:
                fst = p.stat()
                parts.append(f"{Path(p).relative_to(root).as_posix() if root in Path(p).parents else p}|{s.defect}|{fst.st_size}|{fst.st_mtime_ns}")
            except OSError:
                parts.append(f"{p}|missing")
    return _sha1(parts)


def _score(run_dir: Path, detector: str, pcfg: Any, device: str, batch_size: int | None,
           progress: Callable[[int, int], None] | None) -> ScoredSet:
    from core.device import resolve_device
    from core.evaluate import load_test_split, score_split

    dev = resolve_device(device)
    if detector == "fnet":
        from core.fnet import FNetDetector, load_fnet

        run = load_fnet(run_dir, dev)
        det: Any = FNetDetector(run.model)
    elif detector == "anounet":  # one U-Net per image (core.anounet, default settings), its results cached per image
        from core.anounet import AnoUnet, AnoUnetConfig
        from core.fnet import load_fnet

        run = load_fnet(run_dir, dev)
        det = AnoUnet(run.model, AnoUnetConfig(), device=dev, cache=True)
    else:
        from core.runs import load_run

        run = load_run(run_dir, dev)
        if detector == "projection":
            from core.projection import ProjectionDetector

            det = ProjectionDetector(run.model, pcfg, run.config.score_config())
        else:
            det = run.detector()
    index, split = load_test_split(run)
    if len(split) == 0:
        raise ValueError(f"the test split of {run.config.data} has no readable image")
    bs = batch_size or (16 if detector == "projection" else 8 if detector == "anounet" else 32)
    scored = score_split(det, split, batch_size=bs, device=dev, progress=progress)
    maps = None
    if detector != "fnet":  # the f-Net's map is its score broadcast: nothing to localize
        maps = np.clip(scored.maps, -65000, 65000).astype(np.float16)
    meta = {"score_mode": {"fnet": "fnet_distance", "anounet": "anounet_topk"}.get(detector, run.config.score_mode), "size": run.config.size,
            "model": run.config.model, "data_seed": run.config.data_seed, "n_skipped": len(split.skipped),
            "projection": asdict(pcfg) if pcfg is not None else None}
    return ScoredSet.from_split(run.id, detector, split, index.root, scored.scores, maps,
                                data=run.config.data, category=run.config.category or index.category, meta=meta)


def _save(path: Path, ss: ScoredSet, key: str) -> None:
    from core.workspace import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {
        "key": np.array(key), "meta": np.array(json.dumps({
            "format": SCORED_FORMAT, "run_id": ss.run_id, "detector": ss.detector, "data": ss.data,
            "category": ss.category, "meta": ss.meta})),
        "paths": np.array(ss.paths, dtype=str), "defects": np.array(ss.defects, dtype=str),
        "labels": ss.labels.astype(np.int8), "scores": ss.scores, "has_mask": ss.has_mask,
    }
    if ss.maps is not None:
        arrays["maps"] = ss.maps
        arrays["masks"] = ss.masks if ss.masks is not None else np.zeros(ss.maps.shape, bool)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path, key: str) -> ScoredSet | None:
    """The cached set when the file exists, is readable and has ``key``; else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            info = json.loads(str(z["meta"]))
            if info.get("format") != SCORED_FORMAT:
                return None
            maps = z["maps"] if "maps" in z.files else None
            return ScoredSet(info["run_id"], info["detector"], tuple(z["paths"].tolist()), tuple(z["defects"].tolist()),
                             z["labels"].astype(np.int64), z["scores"], maps, z["masks"] if maps is not None else None,
                             z["has_mask"], data=info.get("data") or "", category=info.get("category") or "",
                             meta=info.get("meta") or {})
    except (OSError, KeyError, ValueError, TypeError, EOFError, json.JSONDecodeError, zipfile.BadZipFile):
        return None


def scored_set(
    run_dir: Path | str,
    detector: str = "reconstruction",
    *,
    device: str = "cpu",
    projection_config: Any = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    refresh: bool = False,
) -> ScoredSet:
    """The run's test split scored by ``detector``, cached in the run folder and in memory.

    The first call scores the split (:func:`core.evaluate.score_split`) and writes
    ``<run>/scored/<detector>[_<hash>].npz`` (scores float64, maps float16 at the run's size, masks;
    atomic). Later calls read it back, or return the in-memory copy. The cache is keyed by the
    detector, the projection settings, the best checkpoint's size and mtime (a retrained run is
    rescored) and the test files' names, sizes and mtimes (changed data is rescored).

    Args:
        run_dir: a run folder.
        detector: ``reconstruction`` (the run's own maps and scores), ``projection`` (iterative
            energy-based projection, :class:`core.projection.ProjectionDetector`), ``fnet`` (distance
            to C of an f-Net run; no maps) or ``auto``.
        device: where to score on a cache miss (``cpu``, ``auto``, ``cuda``...).
        projection_config: a :class:`core.projection.ProjectionConfig` (or its fields as a dict).
        batch_size: scoring batch (default 32; 16 for the projection).
        progress: ``progress(done, total)`` while scoring.
        refresh: ignore the caches and rescore.

    Raises:
        core.runs.RunError: not a run or an unusable checkpoint; ValueError: bad detector or data.
    """
    from core.data.builtin import open_dataset

    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    detector = _resolve_detector(detector, cfg, run_dir)
    pcfg = _projection_cfg(projection_config) if detector == "projection" else None
    path = scored_set_path(run_dir, detector, pcfg)
    index = open_dataset(cfg.get("data", "builtin:synthetic"), cfg.get("category"), seed=int(cfg.get("data_seed", 0)))
    key = _cache_key(run_dir, detector, pcfg, index)
    mkey = str(path.resolve())
    with _lock_for(mkey):  # one scoring per cache file at a time; a second caller then finds it cached
        if not refresh:
            with _LOCKS_GUARD:
                hit = _MEMO.get(mkey)
                if hit is not None and hit[0] == key:
                    _MEMO.move_to_end(mkey)
                    return hit[1]
            ss = _load(path, key)
        else:
            ss = None
        if ss is None:
            ss = _score(run_dir, detector, pcfg, device, batch_size, progress)
            _save(path, ss, key)
        with _LOCKS_GUARD:
            _MEMO[mkey] = (key, ss)
            _MEMO.move_to_end(mkey)
            while len(_MEMO) > _MEMO_MAX:
                _MEMO.popitem(last=False)
        return ss


# =========================================================================== #
# Costs
# =========================================================================== #
@dataclass(frozen=True)
class Costs:
    """What the decisions cost, per part (any currency; only ratios matter for the rule).

    Attributes:
        cost_fp: a false alarm (a good part flagged).
        cost_fn: a miss (a defective part passed).
        cost_review: a manual review of each flagged part (good or defective), default 0.
    """

    cost_fp: float
    cost_fn: float
    cost_review: float = 0.0

    def __post_init__(self) -> None:
        for name in ("cost_fp", "cost_fn", "cost_review"):
            v = getattr(self, name)
            try:
                fv = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number, got {v!r}") from None
            if not math.isfinite(fv) or fv < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
            object.__setattr__(self, name, fv)

    @classmethod
    def coerce(cls, costs: Any) -> Costs | None:
        """None, a Costs, a mapping (``cost_fp``/``cost_fn``/``cost_review`` or ``fp``/``fn``/``review``) or a tuple."""
        if costs is None or isinstance(costs, Costs):
            return costs
        if isinstance(costs, Mapping):
            get = lambda *ks: next((costs[k] for k in ks if costs.get(k) is not None), None)  # noqa: E731
            fp, fn, rv = get("cost_fp", "fp"), get("cost_fn", "fn"), get("cost_review", "review")
            if fp is None or fn is None:
                raise ValueError("costs need cost_fp (false alarm) and cost_fn (miss)")
            return cls(fp, fn, 0.0 if rv is None else rv)
        if isinstance(costs, (tuple, list)) and len(costs) in (2, 3):
            return cls(*costs)
        raise ValueError(f"costs must be a mapping with cost_fp and cost_fn, got {costs!r}")


def expected_cost_per_1000(tp: int, fp: int, fn: int, n: int, costs: Costs | Mapping | None) -> float | None:
    """Expected cost per 1,000 parts at one operating point.

    ``1000 * (cost_fp * FP + cost_fn * FN + cost_review * (TP + FP)) / N``: every flagged part
    (TP + FP) is reviewed, every false alarm costs ``cost_fp`` on top, every miss costs ``cost_fn``;
    N is the number of labeled test images, so the test set's defect rate stands for the line's.
    None without costs or images.
    """
    c = Costs.coerce(costs)
    if c is None or n <= 0:
        return None
    return 1000.0 * (c.cost_fp * fp + c.cost_fn * fn + c.cost_review * (tp + fp)) / n


# =========================================================================== #
# Curves
# =========================================================================== #
@dataclass(frozen=True, eq=False)
class Curves:
    """Everything threshold-dependent, precomputed once per scored set (labels -1 left out).

    Curve arrays share one index ``i`` over the candidate thresholds, in **descending** order:
    ``thresholds[0]`` flags nothing (:func:`core.metrics.flag_nothing_threshold`), then every unique
    score of a labeled image. ``tp[i]`` / ``fp[i]`` count the labeled images with
    ``score >= thresholds[i]``; ``fpr``/``tpr``/``precision``/``f1`` follow (0/0 = 0, so
    ``precision[0] == 0``: a PR plot may skip point 0). The same point comes back from
    :func:`operating_point` at ``thresholds[i]``.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    f1: np.ndarray
    n_pos: int
    n_neg: int
    n_unknown: int
    auroc: float | None
    average_precision: float | None
    auroc_ci: tuple[float, float] | None
    f1_max: float
    f1_threshold: float
    score_min: float
    score_max: float
    # sorted views for O(log N) lookups (indices refer to the ScoredSet)
    scores_known: np.ndarray  # labeled scores, in ScoredSet order
    labels_known: np.ndarray
    _s_asc: np.ndarray  # labeled scores ascending
    _cum_pos: np.ndarray  # [n+1]: positives among the k highest labeled scores
    _pos_s: np.ndarray  # defective scores ascending, and their indices
    _pos_i: np.ndarray
    _neg_s: np.ndarray  # good scores ascending, and their indices
    _neg_i: np.ndarray
    _all_s: np.ndarray  # all scores (unknown labels too) ascending, and their indices
    _all_i: np.ndarray

    @property
    def recall(self) -> np.ndarray:
        return self.tpr

    @property
    def n(self) -> int:
        """Labeled images."""
        return self.n_pos + self.n_neg

    @property
    def flag_nothing(self) -> float:
        """The threshold that flags nothing (slider maximum)."""
        return float(self.thresholds[0])


def _ascending(values: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((idx, values))
    return _readonly(values[order].copy()), _readonly(idx[order].copy())


def build_curves(scores: Any, labels: Any, *, n_boot: int = 1000, seed: int = 0) -> Curves:
    """Precompute :class:`Curves` from raw arrays (labels 1 / 0 / -1; -1 is left out)."""
    s_all = np.asarray(scores, dtype=np.float64).reshape(-1)
    y_all = np.asarray(labels).astype(np.int64).reshape(-1)
    if s_all.shape != y_all.shape:
        raise ValueError(f"scores and labels have different lengths: {s_all.size} != {y_all.size}")
    if not np.isfinite(s_all).all():
        raise ValueError("scores contain NaN or inf")
    if not np.isin(y_all, (-1, 0, 1)).all():
        raise ValueError("labels must be 1, 0 or -1")
    idx_all = np.arange(s_all.size)
    known = y_all >= 0
    s, y, idx = s_all[known], y_all[known], idx_all[known]
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if s.size:
        order = np.lexsort((idx, -s))  # descending score, ties by index
        s_desc, y_desc = s[order], y[order]
        cum_pos = np.r_[0, np.cumsum(y_desc)].astype(np.int64)
        ends = np.r_[np.flatnonzero(np.diff(s_desc)), s_desc.size - 1]
        thresholds = np.r_[metrics.flag_nothing_threshold(s), s_desc[ends]]
        tp = np.r_[0, cum_pos[ends + 1]].astype(np.int64)
        fp = np.r_[0, ends + 1 - cum_pos[ends + 1]].astype(np.int64)
        s_asc = s_desc[::-1].copy()
    else:
        top = metrics.flag_nothing_threshold(s_all) if s_all.size else 0.0
        thresholds, tp, fp = np.array([top]), np.zeros(1, np.int64), np.zeros(1, np.int64)
        cum_pos, s_asc = np.zeros(1, np.int64), np.zeros(0)
    fn = n_pos - tp
    fpr = fp / float(n_neg) if n_neg else np.zeros(tp.shape)
    tpr = tp / float(n_pos) if n_pos else np.zeros(tp.shape)
    flagged = tp + fp
    precision = np.divide(tp.astype(np.float64), flagged.astype(np.float64), out=np.zeros(tp.shape), where=flagged > 0)
    den = 2 * tp + fp + fn
    f1 = np.divide(2.0 * tp, den.astype(np.float64), out=np.zeros(tp.shape), where=den > 0)
    both = n_pos > 0 and n_neg > 0
    i_f1 = int(np.argmax(f1))
    pos_s, pos_i = _ascending(s_all[y_all == 1], idx_all[y_all == 1])
    neg_s, neg_i = _ascending(s_all[y_all == 0], idx_all[y_all == 0])
    all_s, all_i = _ascending(s_all, idx_all)
    return Curves(
        thresholds=_readonly(thresholds), tp=_readonly(tp), fp=_readonly(fp), fpr=_readonly(fpr), tpr=_readonly(tpr),
        precision=_readonly(precision), f1=_readonly(f1), n_pos=n_pos, n_neg=n_neg, n_unknown=int((~known).sum()),
        auroc=metrics.image_auroc(s, y) if both else None,
        average_precision=metrics.average_precision(s, y) if both else None,
        auroc_ci=metrics.bootstrap_auroc_ci(s, y, n_boot=n_boot, seed=seed) if both and n_boot > 0 else None,
        f1_max=float(f1[i_f1]), f1_threshold=float(thresholds[i_f1]),
        score_min=float(s_all.min()) if s_all.size else 0.0, score_max=float(s_all.max()) if s_all.size else 0.0,
        scores_known=_readonly(s.copy()), labels_known=_readonly(y.copy()),
        _s_asc=_readonly(s_asc), _cum_pos=_readonly(cum_pos),
        _pos_s=pos_s, _pos_i=pos_i, _neg_s=neg_s, _neg_i=neg_i, _all_s=all_s, _all_i=all_i,
    )


_CURVES_MEMO: OrderedDict[tuple, Curves] = OrderedDict()
_CURVES_LOCK = threading.Lock()


def curves_for(ss: ScoredSet, *, n_boot: int = 1000, seed: int = 0) -> Curves:
    """The :class:`Curves` of a scored set, memoized by content (scores + labels), so a page may call it on every rerun."""
    key = (ss.content_key(), n_boot, seed)
    with _CURVES_LOCK:
        hit = _CURVES_MEMO.get(key)
        if hit is not None:
            _CURVES_MEMO.move_to_end(key)
            return hit
    c = build_curves(ss.scores, ss.labels, n_boot=n_boot, seed=seed)
    with _CURVES_LOCK:
        _CURVES_MEMO[key] = c
        while len(_CURVES_MEMO) > 32:
            _CURVES_MEMO.popitem(last=False)
    return c


def _as_curves(source: Any, labels: Any = None) -> Curves:
    if isinstance(source, Curves):
        return source
    if isinstance(source, ScoredSet):
        return curves_for(source)
    if labels is None:
        raise ValueError("give Curves, a ScoredSet, or scores together with labels")
    return build_curves(source, labels, n_boot=0)


# =========================================================================== #
# Per-threshold lookups (O(log N))
# =========================================================================== #
def _check_t(threshold: float) -> float:
    t = float(threshold)
    if math.isnan(t):
        raise ValueError("threshold must not be NaN")
    return t


def operating_point(curves: Curves, threshold: float, costs: Costs | Mapping | None = None) -> dict[str, Any]:
    """Confusion and rates at ``threshold`` (flag iff ``score >= threshold``), in O(log N).

    Returns:
        ``threshold``, ``tp``, ``fp``, ``tn``, ``fn``, ``tpr``, ``fpr``, ``tnr``, ``precision``, ``f1``,
        ``accuracy`` (exactly as :class:`core.metrics.Confusion`), ``recall`` (= tpr), ``fnr`` (miss
        rate), ``flagged``, ``n``, ``n_pos``, ``n_neg`` and ``cost_per_1000``
        (:func:`expected_cost_per_1000`; None without costs).
    """
    t = _check_t(threshold)
    n = curves.n
    k = n - int(np.searchsorted(curves._s_asc, t, side="left"))  # labeled images with score >= t
    tp = int(curves._cum_pos[k])
    fp = k - tp
    conf = metrics.Confusion(tp=tp, fp=fp, tn=curves.n_neg - fp, fn=curves.n_pos - tp)
    out: dict[str, Any] = {"threshold": t, **conf.as_dict()}
    out.update(recall=conf.recall, fnr=1.0 - conf.tpr if curves.n_pos else 0.0, flagged=k, n=n,
               n_pos=curves.n_pos, n_neg=curves.n_neg,
               cost_per_1000=expected_cost_per_1000(tp, fp, conf.fn, n, costs))
    return out


def false_positives(curves: Curves, threshold: float, limit: int | None = None) -> np.ndarray:
    """Indices (into the ScoredSet) of good images flagged at ``threshold``, highest score first."""
    t = _check_t(threshold)
    k = curves._neg_s.size - int(np.searchsorted(curves._neg_s, t, side="left"))
    k = k if limit is None else min(k, max(0, int(limit)))
    return curves._neg_i[curves._neg_i.size - k:][::-1].copy() if k else np.zeros(0, np.int64)


def false_negatives(curves: Curves, threshold: float, limit: int | None = None) -> np.ndarray:
    """Indices of defective images passed at ``threshold`` (missed), lowest score (best hidden) first."""
    t = _check_t(threshold)
    k = int(np.searchsorted(curves._pos_s, t, side="left"))
    k = k if limit is None else min(k, max(0, int(limit)))
    return curves._pos_i[:k].copy()


def closest_to_threshold(curves: Curves, threshold: float, k: int = 12) -> np.ndarray:
    """Indices of the ``k`` images (unknown labels included) whose score is closest to ``threshold``, closest first."""
    t = _check_t(threshold)
    n = curves._all_s.size
    k = max(0, min(int(k), n))
    if k == 0:
        return np.zeros(0, np.int64)
    p = int(np.searchsorted(curves._all_s, t, side="left"))
    lo, hi = max(0, p - k), min(n, p + k)
    window = curves._all_s[lo:hi]
    order = np.lexsort((curves._all_i[lo:hi], np.abs(window - t)))[:k]
    return curves._all_i[lo:hi][order].copy()


def nearest_point(curves: Curves, x: float, y: float, space: str = "roc") -> dict[str, Any]:
    """The curve point nearest to a click, and its threshold.

    Args:
        x, y: ``(fpr, tpr)`` for ``space="roc"``, ``(recall, precision)`` for ``space="pr"``.

    Returns:
        ``index`` (into the curve arrays), ``threshold``, ``fpr``, ``tpr``, ``precision``, ``recall``;
        ties go to the higher threshold.
    """
    if space == "roc":
        xs, ys = curves.fpr, curves.tpr
    elif space == "pr":
        xs, ys = curves.tpr, curves.precision
    else:
        raise ValueError(f"space must be roc or pr, got {space!r}")
    d = (xs - float(x)) ** 2 + (ys - float(y)) ** 2
    i = int(np.argmin(d))
    return {"index": i, "threshold": float(curves.thresholds[i]), "fpr": float(curves.fpr[i]),
            "tpr": float(curves.tpr[i]), "recall": float(curves.tpr[i]), "precision": float(curves.precision[i])}


def iso_cost_line(curves: Curves, costs: Costs | Mapping, threshold: float) -> dict[str, Any]:
    """The line of equal expected cost through the operating point at ``threshold``, in ROC space.

    Derivation. With ``F`` = FPR, ``T`` = TPR, ``Np`` defective and ``Nn`` good labeled images
    (``N = Np + Nn``): FP = F Nn, FN = (1 - T) Np, flagged = T Np + F Nn, so the expected cost per
    1,000 parts is::

        C(F, T) = 1000 / N * [c_fp F Nn + c_fn (1 - T) Np + c_r (T Np + F Nn)]
                = 1000 / N * [(c_fp + c_r) Nn F - (c_fn - c_r) Np T + c_fn Np]

    C is constant along ``(c_fp + c_r) Nn dF = (c_fn - c_r) Np dT``, a straight line of slope::

        m = dT / dF = (c_fp + c_r) Nn / ((c_fn - c_r) Np)

    which is the classic ``c_fp Nn / (c_fn Np)`` when the review is free. For ``c_fn > c_r`` the
    slope is positive and the cost falls towards the upper left, so the minimum-cost threshold is
    where such a line touches the ROC curve with no ROC point above it. ``c_fn == c_r`` gives a
    vertical line (only F matters); ``c_fn < c_r`` a negative slope (reviewing a part costs more than
    missing it: flagging nothing is cheapest).

    Returns:
        ``fpr`` and ``tpr``: the two end points of the line clipped to the unit square; ``slope``
        (``inf`` when vertical, None when the cost does not depend on the point); ``point``
        ``(F, T)``; ``cost_per_1000`` at the point.
    """
    c = Costs.coerce(costs)
    if c is None:
        raise ValueError("iso_cost_line needs costs")
    op = operating_point(curves, threshold, c)
    f0, t0 = float(op["fpr"]), float(op["tpr"])
    dx = (c.cost_fn - c.cost_review) * curves.n_pos  # direction vector of the line (dF, dT)
    dy = (c.cost_fp + c.cost_review) * curves.n_neg
    if dx == 0 and dy == 0:
        return {"fpr": [0.0, 1.0], "tpr": [t0, t0], "slope": None, "point": (f0, t0), "cost_per_1000": op["cost_per_1000"]}
    s_lo, s_hi = -math.inf, math.inf
    for p, d in ((f0, dx), (t0, dy)):
        if d != 0:
            a, b = (0.0 - p) / d, (1.0 - p) / d
            s_lo, s_hi = max(s_lo, min(a, b)), min(s_hi, max(a, b))
    xs = [f0 + s_lo * dx, f0 + s_hi * dx]
    ys = [t0 + s_lo * dy, t0 + s_hi * dy]
    slope = math.inf if dx == 0 else dy / dx
    return {"fpr": [min(1.0, max(0.0, v)) for v in xs], "tpr": [min(1.0, max(0.0, v)) for v in ys],
            "slope": slope, "point": (f0, t0), "cost_per_1000": op["cost_per_1000"]}


# =========================================================================== #
# Threshold rules
# =========================================================================== #
@dataclass(frozen=True)
class Preset:
    """A named way of use: a rule with its parameter."""

    name: str
    title: str
    rule: str
    target_fpr: float | None = None
    target_tpr: float | None = None
    description: str = ""


PRESETS: dict[str, Preset] = {
    "first_screen": Preset(
        "first_screen", "AI as a first screen", "fpr", target_fpr=0.01,
        description="High threshold: what the AI flags is surely bad (at most 1 % of good parts flagged); "
                    "people check the rest."),
    "anything_unusual": Preset(
        "anything_unusual", "Flag anything unusual", "tpr", target_tpr=0.99,
        description="Low threshold: anything unusual is flagged, so what passes is surely good (at most 1 % of "
                    "defects missed); people check what is flagged."),
}


def choose_threshold(
    source: Curves | ScoredSet | Any,
    rule: str,
    *,
    labels: Any = None,
    target_fpr: float | None = None,
    target_tpr: float | None = None,
    costs: Costs | Mapping | None = None,
) -> float:
    """The threshold a rule picks (flag iff ``score >= threshold``); unknown labels (-1) are ignored.

    Rules (candidates are every labeled score plus the "flag nothing" value; ties go to the highest
    threshold, i.e. the fewest flags):

    * ``f1`` - maximum F1 (:func:`core.metrics.f1_max`);
    * ``youden`` - maximum TPR - FPR (:func:`core.metrics.youden_threshold`; needs both classes);
    * ``fpr`` - lowest threshold with FPR <= ``target_fpr``, i.e. the most defects caught within a
      false-alarm budget ("at most x % of good parts flagged"; :func:`core.metrics.threshold_for_fpr`);
    * ``tpr`` - highest threshold with TPR >= ``target_tpr``, i.e. the fewest false alarms that still
      catch that share of defects ("miss at most y %": ``target_tpr = 1 - y``;
      :func:`core.metrics.threshold_for_tpr`);
    * ``cost`` - minimum expected cost (:func:`expected_cost_per_1000`). Since the review cost adds
      ``c_r (TP + FP) = c_r FP - c_r FN + c_r Np``, this is :func:`core.metrics.min_cost_threshold`
      with ``cost_fp + cost_review`` and ``cost_fn - cost_review``; when a miss costs no more than a
      review, flagging nothing is cheapest.

    Args:
        source: :class:`Curves`, a :class:`ScoredSet`, or raw scores (then ``labels`` too).

    Raises:
        ValueError: unknown rule, missing or out-of-range target / costs, or data the rule cannot use.
    """
    c = _as_curves(source, labels)
    s, y = c.scores_known, c.labels_known
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if s.size == 0:
        raise ValueError("no labeled image to choose a threshold on")
    if rule == "f1":
        return float(metrics.f1_max(s, y)[1])
    if rule == "youden":
        return float(metrics.youden_threshold(s, y))
    if rule == "fpr":
        if target_fpr is None:
            raise ValueError("rule 'fpr' needs a target false-alarm rate (target_fpr, e.g. 0.01)")
        return float(metrics.threshold_for_fpr(s, y, target_fpr))
    if rule == "tpr":
        if target_tpr is None:
            raise ValueError("rule 'tpr' needs a target detection rate (target_tpr, e.g. 0.99)")
        return float(metrics.threshold_for_tpr(s, y, target_tpr))
    cc = Costs.coerce(costs)
    if cc is None:
        raise ValueError("rule 'cost' needs the cost of a false alarm (cost_fp) and of a miss (cost_fn)")
    if cc.cost_fn <= cc.cost_review:
        return float(c.thresholds[0])
    return float(metrics.min_cost_threshold(s, y, cc.cost_fp + cc.cost_review, cc.cost_fn - cc.cost_review))


def apply_rule(
    source: Curves | ScoredSet,
    rule: str,
    *,
    target_fpr: float | None = None,
    target_tpr: float | None = None,
    costs: Costs | Mapping | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """:func:`choose_threshold` plus the :func:`operating_point` there, as one JSON-ready dict.

    ``preset`` (a key of :data:`PRESETS`) replaces ``rule`` and its target. Keys: ``rule``,
    ``preset``, ``target_fpr``, ``target_tpr``, ``cost_fp``, ``cost_fn``, ``cost_review`` and the
    operating-point keys (``threshold``, ``tp``, ... ``cost_per_1000``).
    """
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        p = PRESETS[preset]
        rule, target_fpr, target_tpr = p.rule, p.target_fpr, p.target_tpr
    c = _as_curves(source)
    cc = Costs.coerce(costs)
    t = choose_threshold(c, rule, target_fpr=target_fpr, target_tpr=target_tpr, costs=cc)
    out: dict[str, Any] = {"rule": rule, "preset": preset, "target_fpr": target_fpr, "target_tpr": target_tpr,
                           "cost_fp": cc.cost_fp if cc else None, "cost_fn": cc.cost_fn if cc else None,
                           "cost_review": cc.cost_review if cc else None}
    out.update(operating_point(c, t, cc))
    return out


def summary(ss: ScoredSet, curves: Curves | None = None, *, pixel: bool = True) -> dict[str, Any]:
    """The image (and pixel) metrics of a scored set, with the keys of ``evaluate --json``.

    ``image_auroc``, ``image_auroc_ci`` ([lo, hi] bootstrap 95 %), ``average_precision``, ``f1_max``,
    ``threshold`` (F1-max), ``pixel_auroc``, ``aupro`` (None without pixel ground truth),
    ``n_images``, ``n_defective``, ``n_unknown``.
    """
    c = curves or curves_for(ss)
    out: dict[str, Any] = {"image_auroc": c.auroc, "image_auroc_ci": list(c.auroc_ci) if c.auroc_ci else None,
                           "average_precision": c.average_precision, "f1_max": c.f1_max, "threshold": c.f1_threshold,
                           "pixel_auroc": None, "aupro": None, "n_images": c.n, "n_defective": c.n_pos,
                           "n_unknown": c.n_unknown}
    if pixel:
        pc = pixel_curves(ss)
        if pc is not None:
            out.update(pixel_auroc=pc.pixel_auroc, aupro=pc.aupro)
    return out


# =========================================================================== #
# Pixel level
# =========================================================================== #
@dataclass(frozen=True, eq=False)
class PixelCurves:
    """Histograms of map values of defect vs. normal pixels (images with pixel ground truth).

    ``grid`` holds the candidate pixel thresholds, ascending, followed by one value above the maximum
    (flags nothing). For float16 maps (the cached ones) it is every distinct map value, so all counts
    are exact at any threshold; for other dtypes, equal-width steps over the value range mixed with
    quantiles of the defect and of the normal pixels (about ``bins`` values), so both the value range
    and the pixel mass are resolved. ``pos_ge[j]`` / ``neg_ge[j]`` count defect / normal pixels with
    ``value >= grid[j]``, exactly. A threshold between grid values is snapped up to the next grid
    value (:func:`pixel_metrics` reports it as ``threshold_used``); with a coarse grid the counts are
    then off by at most the pixels of one bin. ``precision``/``recall``/``f1``/``iou``/``fpr`` are the
    curves over ``grid`` (up to tens of thousands of points: thin them out for plotting).
    """

    grid: np.ndarray
    pos_ge: np.ndarray
    neg_ge: np.ndarray
    n_pos: int
    n_neg: int
    n_images: int
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    iou: np.ndarray
    fpr: np.ndarray
    f1_max: float
    f1_threshold: float
    pixel_auroc: float | None
    aupro: float | None
    pro_fpr: np.ndarray | None
    pro: np.ndarray | None
    value_min: float
    value_max: float


def _pixel_rates(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> dict[str, np.ndarray]:
    tp = np.asarray(tp, np.float64)
    fp = np.asarray(fp, np.float64)
    fn = n_pos - tp

    def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros(np.shape(a)), where=np.asarray(b) > 0)

    return {"precision": div(tp, tp + fp), "recall": div(tp, np.full(tp.shape, float(n_pos))),
            "f1": div(2 * tp, 2 * tp + fp + fn), "iou": div(tp, tp + fp + fn),
            "fpr": div(fp, np.full(fp.shape, float(n_neg)))}


def build_pixel_curves(maps: np.ndarray, masks: np.ndarray, *, bins: int = 4096, pro: bool = True,
                       pro_thresholds: int = 200) -> PixelCurves | None:
    """Pixel histograms (and the PRO curve) of maps ``[N, H, W]`` vs. masks; None without defect pixels.

    float16 maps (as :func:`scored_set` caches them) are histogrammed over their distinct values, so
    every pixel metric is exact; other dtypes over a grid of about ``bins`` values.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks).astype(bool, copy=False)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise ValueError(f"maps and masks must be [N, H, W] of one shape, got {maps.shape} and {masks.shape}")
    if maps.size == 0 or not masks.any():
        return None
    g = masks.reshape(-1)
    if maps.dtype == np.float16:
        codes = maps.reshape(-1).view(np.uint16)
        pos_c = np.bincount(codes[g], minlength=65536)
        neg_c = np.bincount(codes[~g], minlength=65536)
        present = np.flatnonzero(pos_c + neg_c)
        vals = np.arange(65536, dtype=np.uint16)[present].view(np.float16).astype(np.float64)
        if not np.isfinite(vals).all():
            raise ValueError("anomaly maps contain NaN or inf")
        order = np.argsort(vals, kind="stable")
        vals, pos_c, neg_c = vals[order], pos_c[present][order], neg_c[present][order]
        grid, starts = np.unique(vals, return_index=True)  # merges -0.0 and +0.0
        pos_h, neg_h = np.add.reduceat(pos_c, starts), np.add.reduceat(neg_c, starts)
        lo, hi = float(grid[0]), float(grid[-1])
        top = metrics.flag_nothing_threshold(np.array([lo, hi]))
    else:
        v = maps.reshape(-1).astype(np.float32, copy=False)
        if not np.isfinite(v).all():
            raise ValueError("anomaly maps contain NaN or inf")
        lo, hi = float(v.min()), float(v.max())
        q = np.linspace(0.0, 1.0, max(2, bins // 4))
        parts = [np.linspace(lo, hi, max(2, bins // 2)), np.quantile(v[g], q, method="lower")]
        if not g.all():
            parts.append(np.quantile(v[~g], q, method="lower"))
        grid = np.unique(np.concatenate(parts).astype(np.float32)).astype(np.float64)
        grid = grid[(grid >= lo) & (grid <= hi)]
        if grid.size == 0 or grid[0] > lo:
            grid = np.r_[lo, grid]
        top = metrics.flag_nothing_threshold(np.array([lo, hi]))
        b = np.searchsorted(grid, v, side="right") - 1  # grid[b] <= v < grid[b+1]; b >= 0 since grid[0] == min
        pos_h = np.bincount(b[g], minlength=grid.size)
        neg_h = np.bincount(b[~g], minlength=grid.size)
    pos_ge = np.r_[np.cumsum(pos_h[::-1])[::-1], 0].astype(np.int64)
    neg_ge = np.r_[np.cumsum(neg_h[::-1])[::-1], 0].astype(np.int64)
    grid = np.r_[grid, top]
    n_pos, n_neg = int(g.sum()), int(g.size - g.sum())
    r = _pixel_rates(pos_ge, neg_ge, n_pos, n_neg)
    j = int(np.argmax(r["f1"][::-1]))  # ties: the highest threshold
    j = grid.size - 1 - j
    pro_fpr = pro_y = None
    aupro = pix_auroc = None
    if pro:
        m32 = maps.astype(np.float32, copy=False)
        if n_neg:
            pix_auroc = metrics.pixel_auroc(m32, masks)
            pro_fpr, pro_y = metrics.pro_curve(m32, masks, num_thresholds=pro_thresholds)
            aupro = metrics.aupro(m32, masks, num_thresholds=pro_thresholds)
    return PixelCurves(grid=_readonly(grid), pos_ge=_readonly(pos_ge), neg_ge=_readonly(neg_ge), n_pos=n_pos, n_neg=n_neg,
                       n_images=int(maps.shape[0]), precision=r["precision"], recall=r["recall"], f1=r["f1"], iou=r["iou"],
                       fpr=r["fpr"], f1_max=float(r["f1"][j]), f1_threshold=float(grid[j]), pixel_auroc=pix_auroc,
                       aupro=aupro, pro_fpr=pro_fpr, pro=pro_y, value_min=lo, value_max=hi)


_PIXEL_MEMO: OrderedDict[tuple, tuple[Any, PixelCurves | None]] = OrderedDict()
_PIXEL_LOCK = threading.Lock()


def pixel_curves(ss: ScoredSet, *, bins: int = 4096, pro: bool = True) -> PixelCurves | None:
    """:class:`PixelCurves` over the images with pixel ground truth and a known label; None when there is none.

    Memoized per (maps, masks, selected images), so relabeling a copy of a set reuses the work when
    the pixel ground truth did not change.
    """
    sel = ss.pixel_known
    if ss.maps is None or ss.masks is None or not sel.any():
        return None
    key = (id(ss.maps), id(ss.masks), hashlib.sha1(sel.tobytes()).hexdigest(), bins, pro)
    with _PIXEL_LOCK:
        hit = _PIXEL_MEMO.get(key)
        if hit is not None:
            _PIXEL_MEMO.move_to_end(key)
            return hit[1]
    pc = build_pixel_curves(ss.maps[sel], ss.masks[sel], bins=bins, pro=pro)
    with _PIXEL_LOCK:
        _PIXEL_MEMO[key] = ((ss.maps, ss.masks), pc)  # holding the arrays keeps their ids unique
        while len(_PIXEL_MEMO) > 16:
            _PIXEL_MEMO.popitem(last=False)
    return pc


def pixel_metrics(pc: PixelCurves, threshold: float) -> dict[str, Any]:
    """Pixel counts and precision / recall / F1 / IoU / FPR at a pixel threshold, O(log bins).

    A pixel is flagged iff ``value >= threshold_used`` (the smallest grid value >= ``threshold``).
    IoU and F1 are over all pixels of all images with ground truth (not a per-image mean).
    """
    t = _check_t(threshold)
    j = min(int(np.searchsorted(pc.grid, t, side="left")), pc.grid.size - 1)
    tp, fp = int(pc.pos_ge[j]), int(pc.neg_ge[j])
    r = _pixel_rates(np.array([tp]), np.array([fp]), pc.n_pos, pc.n_neg)
    return {"threshold": t, "threshold_used": float(pc.grid[j]), "tp": tp, "fp": fp, "fn": pc.n_pos - tp,
            "tn": pc.n_neg - fp, **{k: float(v[0]) for k, v in r.items()}}


def binary_segmentation(amap: np.ndarray, threshold: float) -> np.ndarray:
    """bool map: ``amap >= threshold`` (any shape), compared exactly (in float64) as :func:`pixel_metrics` counts."""
    return np.asarray(amap).astype(np.float64, copy=False) >= _check_t(threshold)


def segmentation_overlay(image: np.ndarray, seg: np.ndarray, mask: np.ndarray | None = None,
                         alpha: float = 0.45, color: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """RGB uint8: ``image`` with the predicted pixels tinted and the ground-truth outline in green.

    Args:
        image: ``[H, W]``, ``[H, W, C]`` or ``[C, H, W]`` uint8 (or float in [0, 1]).
        seg: bool ``[H, W]`` (:func:`binary_segmentation`).
        mask: optional bool ``[H, W]`` ground truth.
    """
    from core.viz import mask_contour

    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    seg = np.asarray(seg, bool)
    if seg.shape != img.shape[:2]:
        raise ValueError(f"segmentation {seg.shape} does not match the image {img.shape[:2]}")
    out = img.astype(np.float32)
    out[seg] = (1 - alpha) * out[seg] + alpha * np.asarray(color, np.float32)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if mask is not None and np.asarray(mask).any():
        out = mask_contour(out, np.asarray(mask, bool))
    return out


# =========================================================================== #
# Decision record
# =========================================================================== #
_S, _F, _I = "str", "float", "int"
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
    import core

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
            raise ValueError(f"decision record: {where} must be text, got {value!r}")
        return value if value != "" else None
    if isinstance(value, bool):
        raise ValueError(f"decision record: {where} must be a number, got {value!r}")
    try:
        if typ == _I:
            f = float(value)
            if not f.is_integer():
                raise ValueError
            return int(f)
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"decision record: {where} must be {'an integer' if typ == _I else 'a number'}, got {value!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"decision record: {where} must be finite, got {value!r}")
    return f


def _validate_record(rec: Any) -> dict[str, Any]:
    if not isinstance(rec, Mapping):
        raise ValueError("decision record: expected one JSON object")
    if rec.get("format") != RECORD_FORMAT:
        raise ValueError(f"not a decision record (format {rec.get('format')!r}, expected {RECORD_FORMAT!r})")
    out: dict[str, Any] = {}
    for key, typ, req in _TOP:
        v = _coerce(rec.get(key), typ, f"'{key}'")
        if req and v is None:
            raise ValueError(f"decision record: '{key}' is missing")
        out[key] = v
    for sec, spec in _SECTIONS.items():
        raw = rec.get(sec)
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ValueError(f"decision record: '{sec}' must be an object")
        out[sec] = {}
        for key, typ, req in spec:
            v = _coerce(raw.get(key), typ, f"'{sec}.{key}'")
            if req and v is None:
                raise ValueError(f"decision record: '{sec}.{key}' is missing")
            out[sec][key] = v
    if out["rule"] not in RECORD_RULES:
        raise ValueError(f"decision record: unknown rule {out['rule']!r} (expected one of {', '.join(RECORD_RULES)})")
    if out["preset"] is not None and out["preset"] not in PRESETS:
        raise ValueError(f"decision record: unknown preset {out['preset']!r}")
    rp, cs = out["rule_params"], out["costs"]
    if out["rule"] == "fpr" and rp["target_fpr"] is None:
        raise ValueError("decision record: rule 'fpr' without rule_params.target_fpr")
    if out["rule"] == "tpr" and rp["target_tpr"] is None:
        raise ValueError("decision record: rule 'tpr' without rule_params.target_tpr")
    if out["rule"] == "cost" and (cs["cost_fp"] is None or cs["cost_fn"] is None):
        raise ValueError("decision record: rule 'cost' without costs.cost_fp and costs.cost_fn")
    for k in ("target_fpr", "target_tpr"):
        if rp[k] is not None and not 0.0 <= rp[k] <= 1.0:
            raise ValueError(f"decision record: rule_params.{k} must be in [0, 1], got {rp[k]}")
    for k, v in cs.items():
        if v is not None and v < 0:
            raise ValueError(f"decision record: costs.{k} must be >= 0, got {v}")
    try:
        datetime.strptime(out["created_utc"], "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise ValueError(f"decision record: created_utc must look like 2024-01-31T12:00:00Z, got {out['created_utc']!r}") from None
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
            raise ValueError("decision record: the file is not UTF-8 text") from None
    return data.lstrip("\ufeff")


def record_from_json(text: str | bytes) -> dict[str, Any]:
    """Parse and validate a JSON decision record (ValueError with the reason when malformed)."""
    try:
        obj = json.loads(_text(text))
    except json.JSONDecodeError as exc:
        raise ValueError(f"decision record is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return _validate_record(obj)


def record_from_csv(text: str | bytes) -> dict[str, Any]:
    """Parse and validate a CSV decision record (header + exactly one data row)."""
    try:
        rows = [r for r in csv.reader(io.StringIO(_text(text))) if any(cell.strip() for cell in r)]
    except csv.Error as exc:
        raise ValueError(f"decision record is not valid CSV ({exc})") from None
    if len(rows) != 2:
        raise ValueError(f"decision record CSV must have a header and exactly one data row, got {len(rows)} row(s)")
    header, values = rows
    if len(header) != len(values):
        raise ValueError(f"decision record CSV: {len(header)} columns in the header but {len(values)} in the row")
    flat = dict(zip((h.strip() for h in header), values))
    known = {name for name, _, _ in _csv_columns()}
    unknown = [h for h in flat if h not in known]
    if "format" not in flat:
        raise ValueError("decision record CSV has no 'format' column")
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


# =========================================================================== #
# Command line (python -m core evaluate RUN --rule ...)
# =========================================================================== #
def check_rule_options(rule: str | None, *, target_fpr: float | None = None, target_tpr: float | None = None,
                       cost_fp: float | None = None, cost_fn: float | None = None, cost_review: float | None = None) -> None:
    """Fail fast (ValueError, one line naming the CLI flag) on a rule without what it needs."""
    if rule is None:
        if any(v is not None for v in (target_fpr, target_tpr, cost_fp, cost_fn, cost_review)):
            raise ValueError("--target-fpr, --target-tpr and --cost-* need --rule")
        return
    if rule not in RULES:
        raise ValueError(f"--rule must be one of {', '.join(RULES)}, got {rule!r}")
    if rule == "fpr" and target_fpr is None:
        raise ValueError("--rule fpr needs --target-fpr (the largest share of good parts flagged, e.g. 0.01)")
    if rule == "tpr" and target_tpr is None:
        raise ValueError("--rule tpr needs --target-tpr (the smallest share of defects caught, e.g. 0.99)")
    if rule == "cost" and (cost_fp is None or cost_fn is None):
        raise ValueError("--rule cost needs --cost-fp (a false alarm) and --cost-fn (a miss)")
    for name, v in (("--target-fpr", target_fpr), ("--target-tpr", target_tpr)):
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {v}")
    if cost_fp is not None or cost_fn is not None or cost_review is not None:
        if cost_fp is None or cost_fn is None:
            raise ValueError("give both --cost-fp and --cost-fn")
        Costs(cost_fp, cost_fn, cost_review or 0.0)


def evaluate_with_rule(
    run_dir: Path | str,
    base: Mapping[str, Any],
    *,
    detector: str = "auto",
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
    ss = scored_set(run_dir, detector, device=device)
    out = dict(base)
    own = ss.detector in ("reconstruction", "fnet")
    if labels != "dataset":
        from core.labels import relabel_scored

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
