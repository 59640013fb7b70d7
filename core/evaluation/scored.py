"""The one evaluation path: a run's test split scored by a detector into a :class:`ScoredSet`, cached.

:func:`scored_set` builds the detector through :mod:`core.detectors.registry`, scores the split with
:func:`score_split` and keeps scores, maps (float16) and masks in ``<run>/scored/<detector>[_<hash>].npz``;
the CLI and every page read that one set. Conventions: higher score = more anomalous, label 1 = defective,
an image is flagged iff ``score >= threshold``; label ``-1`` (no label, "unsure", an unlabeled folder) is
left out of every metric. ``core`` never imports streamlit."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cachetools import LRUCache

from core.data.builtin import open_dataset
from core.data.index import (
    UNLABELED_NAMES as _UNLABELED_FOLDERS,  # images without a dataset label
)
from core.data.index import DatasetIndex
from core.data.loading import LoadedSplit, load_split
from core.detectors import registry as detectors
from core.detectors.fnet_distance import load_fnet
from core.device import resolve_device
from core.errors import ConfigError
from core.models.contract import Detector
from core.runs import BEST_CKPT, CONFIG_FILE, LoadedRun, RunError, load_run, read_json
from core.training import distributed
from core.workspace import atomic_write_bytes

SCORED_DIR = "scored"


SCORED_FORMAT = "anomalylab-scored/1"
# Bumped when a detector's algorithm changes under the same settings, so that its cached scores are made again
# (projection 2: the energy guard, issue 14).
DETECTOR_VERSIONS = {"projection": 2}


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
        extras: the detector's per-image diagnostics (``AnomalyOutput.extras``), each ``[N, ...]``: e.g. the
            projection's ``energy`` per step and ``diverged_step``.
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
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        paths = tuple(str(p) for p in self.paths)
        n = len(paths)
        defects = tuple(str(d) for d in self.defects)
        if len(defects) != n:
            raise ConfigError(f"{len(defects)} defects for {n} paths")
        labels = np.asarray(self.labels)
        if labels.shape != (n,):
            raise ConfigError(f"labels must have shape ({n},), got {labels.shape}")
        labels = labels.astype(np.int64)
        if not np.isin(labels, (-1, 0, 1)).all():
            raise ConfigError("labels must be 1 (defective), 0 (good) or -1 (unknown)")
        scores = np.asarray(self.scores, dtype=np.float64)
        if scores.shape != (n,):
            raise ConfigError(f"scores must have shape ({n},), got {scores.shape}")
        if not np.isfinite(scores).all():
            raise ConfigError("scores contain NaN or inf")
        maps = self.maps
        if maps is not None:
            maps = np.asarray(maps)
            if maps.dtype not in (np.float16, np.float32, np.float64) or maps.ndim != 3 or maps.shape[0] != n:
                raise ConfigError(f"maps must be float [N={n}, H, W], got {maps.dtype} {maps.shape}")
        masks = self.masks
        if masks is not None:
            masks = np.asarray(masks).astype(bool, copy=False)
            if maps is None or masks.shape != maps.shape:
                raise ConfigError("masks need maps of the same shape")
        has_mask = np.zeros(n, bool) if self.has_mask is None or masks is None else np.asarray(self.has_mask, dtype=bool)
        if has_mask.shape != (n,):
            raise ConfigError(f"has_mask must have shape ({n},)")
        ds = tuple(str(d) for d in self.dataset_defects) if self.dataset_defects is not None else defects
        if len(ds) != n:
            raise ConfigError("dataset_defects must have one entry per image")
        put("paths", paths)
        put("defects", defects)
        put("labels", _readonly(labels))
        put("scores", _readonly(scores))
        put("maps", _readonly(maps) if maps is not None else None)
        put("masks", _readonly(masks) if masks is not None else None)
        put("has_mask", _readonly(has_mask))
        put("dataset_defects", ds)
        extras = {}
        for k, v in (self.extras or {}).items():
            a = np.asarray(v)
            if a.ndim == 0 or a.shape[0] != n or a.dtype == object:
                raise ConfigError(f"extras[{k!r}] must be an array with one row per image, got {a.dtype} {a.shape}")
            extras[str(k)] = _readonly(a)
        put("extras", extras)

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
            raise ConfigError(f"{path!r} is not an image of this set") from None

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
                raise ConfigError(f"labels must have {n} entries, got shape {arr.shape}")
            new = np.array([_label_value(v) for v in arr.tolist()], dtype=np.int64)
        given: list[str | None] = [None] * n
        if isinstance(defects, Mapping):
            for p, d in defects.items():
                given[self.index_of(p)] = d
        elif defects is not None:
            if len(defects) != n:
                raise ConfigError(f"defects must have {n} entries")
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
                    raise ConfigError(f"mask of {p} has shape {m.shape}, expected {new_masks.shape[1:]}")
                new_masks[i] = m
                new_has[i] = True
        elif masks:
            raise ConfigError("this set has no maps/masks to paint on")
        return replace(self, labels=new, defects=tuple(out_defects), masks=new_masks, has_mask=new_has)

    # ------------------------------------------------------------- builders
    @classmethod
    def from_split(cls, run_id: str, detector: str, split: Any, root: Path | str, scores: np.ndarray,
                   maps: np.ndarray | None = None, *, data: str = "", category: str = "",
                   meta: dict[str, Any] | None = None, extras: Mapping[str, np.ndarray] | None = None) -> ScoredSet:
        """Build from a :class:`core.data.loading.LoadedSplit` and a detector's scores / maps (any detector)."""
        root = Path(root)
        paths = [s.relpath(root) for s in split.samples]
        defects = [s.defect for s in split.samples]
        labels = [-1 if s.defect.lower() in _UNLABELED_FOLDERS else s.label for s in split.samples]
        masks = split.masks.numpy() if maps is not None else None
        return cls(run_id, detector, tuple(paths), tuple(defects), np.asarray(labels, np.int64),
                   np.asarray(scores, np.float64), maps, masks, np.asarray(split.has_mask, bool) if maps is not None else None,
                   data=data, category=category or "", meta=dict(meta or {}), extras=dict(extras or {}))


@dataclass
class Scored:
    """Raw detector output over a whole split (numpy, in the split's order), reconstructions included.

    An intermediate of :func:`score_split`: results and metrics come from the :class:`ScoredSet` built from it.
    """

    split: LoadedSplit
    scores: np.ndarray  # [N]
    maps: np.ndarray | None  # [N, H, W] float32; None for an image-level detector
    reconstructions: np.ndarray | None  # [N, C, H, W] float32
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # the detector's per-image diagnostics, [N, ...]


@torch.no_grad()
def score_split(
    detector: Detector, split: LoadedSplit, *, batch_size: int = 32, device: torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Scored:
    """Run ``detector`` over every image of ``split`` in batches."""
    device = device or torch.device("cpu")
    scores, maps, recons = [], [], []
    extras: dict[str, list[np.ndarray]] = {}
    n = len(split)
    for i in range(0, n, batch_size):
        x = split.images[i : i + batch_size].to(device).float().div_(255.0)
        out = detector.predict(x)
        scores.append(out.score.float().cpu().numpy())
        if out.anomaly_map is not None:
            maps.append(out.anomaly_map.float().cpu().numpy())
        if out.reconstruction is not None:
            recons.append(out.reconstruction.float().cpu().numpy())
        for k, v in (out.extras or {}).items():
            extras.setdefault(k, []).append(v.cpu().numpy())
        if progress:
            progress(min(n, i + batch_size), n)
    c, h, w = split.images.shape[1:]
    return Scored(
        split,
        np.concatenate(scores) if scores else np.zeros(0, np.float32),
        np.concatenate(maps) if maps else (None if n else np.zeros((0, h, w), np.float32)),
        np.concatenate(recons) if recons else None,
        {k: np.concatenate(v) for k, v in extras.items()},
    )


def load_test_split(run: LoadedRun) -> tuple[DatasetIndex, LoadedSplit]:
    """The dataset index of a run and its test split, at the run's size and channels."""
    cfg = run.config
    index = open_dataset(cfg.data, cfg.category, seed=cfg.data_seed)
    return index, load_split(index, "test", cfg.size, cfg.channels)


def _label_value(v: Any) -> int:
    if isinstance(v, str):
        key = v.strip().lower()
        table = {"good": 0, "defective": 1, "unsure": -1, "unknown": -1, "0": 0, "1": 1, "-1": -1}
        if key not in table:
            raise ConfigError(f"unknown label {v!r}: use good, defective, unsure or 1 / 0 / -1")
        return table[key]
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    try:
        iv = int(v)
    except (TypeError, ValueError):
        raise ConfigError(f"unknown label {v!r}") from None
    if iv not in (-1, 0, 1) or iv != v:
        raise ConfigError(f"unknown label {v!r}: use 1 (defective), 0 (good) or -1 (unknown)")
    return iv


# =========================================================================== #
# Building and caching a ScoredSet per run
# =========================================================================== #
_MEMO_MAX = 8
_MEMO: LRUCache[str, tuple[str, ScoredSet]] = LRUCache(_MEMO_MAX)


_LOCKS: dict[str, threading.Lock] = {}


_LOCKS_GUARD = threading.Lock()


def _lock_for(key: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def _run_config(run_dir: Path) -> dict[str, Any]:
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run folder")
    cfg = read_json(run_dir / CONFIG_FILE).get("config")
    if not isinstance(cfg, dict):
        raise RunError(f"{run_dir / CONFIG_FILE} has no config")
    return cfg


def default_detector(run_dir: Path | str) -> str:
    """The run's default detector (``fnet-distance`` for an f-Net run, else ``reconstruction``)."""
    try:
        return detectors.default_name(str(_run_config(Path(run_dir)).get("model")))
    except ValueError:
        return "reconstruction"


def _settings(spec: detectors.DetectorSpec, settings: Mapping[str, Any] | None, projection_config: Any) -> dict[str, Any]:
    """The detector's full settings; ``projection_config`` (a ProjectionConfig or dict) is the older spelling."""
    given: dict[str, Any] = {}
    if projection_config is not None and spec.name == "projection":
        given.update(asdict(projection_config) if not isinstance(projection_config, Mapping) else projection_config)
    given.update(settings or {})
    return detectors.parse_settings(spec, given)


def _file_name(spec: detectors.DetectorSpec, settings: Mapping[str, Any]) -> str:
    """``<detector>`` with the default settings, else ``<detector>_<sha1 of the settings, 10 hex>``."""
    defaults = detectors.parse_settings(spec)
    if detectors.settings_key(settings) == detectors.settings_key(defaults):
        return spec.name
    return f"{spec.name}_{hashlib.sha1(detectors.settings_key(settings).encode()).hexdigest()[:10]}"


def _selection(images: Sequence[str] | None) -> tuple[str, ...] | None:
    """The chosen images as a tuple of relative paths in the caller's order (duplicates dropped), or None = all."""
    if images is None:
        return None
    sel = tuple(dict.fromkeys(str(p) for p in images))
    if not sel:
        raise ConfigError("no image selected")
    return sel


def _cache_path(run_dir: Path, spec: detectors.DetectorSpec, settings: Mapping[str, Any],
                selection: tuple[str, ...] | None) -> Path:
    name = _file_name(spec, settings)
    if selection is not None:
        name += f"@{_sha1(selection)[:10]}"
    return run_dir / SCORED_DIR / f"{name}.npz"


def scored_set_path(run_dir: Path | str, detector: str = "auto", projection_config: Any = None, *,
                    settings: Mapping[str, Any] | None = None, images: Sequence[str] | None = None) -> Path:
    """Where :func:`scored_set` caches: ``<run>/scored/<detector>[_<settings hash>][@<selection hash>].npz``."""
    run_dir = Path(run_dir)
    spec = detectors.resolve(str(_run_config(run_dir).get("model")), detector)
    return _cache_path(run_dir, spec, _settings(spec, settings, projection_config), _selection(images))


def data_fingerprint(index: DatasetIndex) -> list[str]:
    """What identifies the test files: relative path, defect, size and mtime of each image and mask."""
    parts = []
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
    return parts


def _cache_key(run_dir: Path, spec: detectors.DetectorSpec, settings: Mapping[str, Any], index: DatasetIndex,
               selection: tuple[str, ...] | None = None) -> str:
    """sha1 over what decides the scores: detector, its settings, checkpoint identity, test files, the selection."""
    ckpt = run_dir / BEST_CKPT
    try:
        st = ckpt.stat()
    except OSError:
        raise RunError(f"checkpoint {ckpt} is missing") from None
    parts = [SCORED_FORMAT, spec.name, detectors.settings_key(settings), f"ckpt|{st.st_size}|{st.st_mtime_ns}"]
    if spec.name in DETECTOR_VERSIONS:
        parts.append(f"version|{DETECTOR_VERSIONS[spec.name]}")
    if selection is not None:
        parts += ["selection", *selection]
    return _sha1(parts + data_fingerprint(index))


def select(index: DatasetIndex, split: LoadedSplit, selection: Sequence[str]) -> LoadedSplit:
    """The images of ``split`` named by ``selection`` (paths relative to the category folder), in that order."""
    root = Path(index.root)
    where = {s.relpath(root): i for i, s in enumerate(split.samples)}
    missing = [p for p in selection if p not in where]
    if missing:
        raise ConfigError(f"{missing[0]!r} is not a readable test image of {index.root}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return split.subset([where[p] for p in selection])


def load_for(run_dir: Path | str, spec: detectors.DetectorSpec, device: torch.device) -> LoadedRun:
    """The run loaded as ``spec``'s detector needs it (an f-Net frozen, for the distance and Ano-Unet)."""
    return load_fnet(run_dir, device) if "fnet" in spec.models else load_run(run_dir, device)


def _score(run_dir: Path, spec: detectors.DetectorSpec, settings: dict[str, Any], device: str, batch_size: int | None,
           progress: Callable[[int, int], None] | None, selection: tuple[str, ...] | None = None,
           ctx: distributed.DistContext | None = None) -> ScoredSet:
    dev = ctx.device if ctx is not None else resolve_device(device)
    run = load_for(run_dir, spec, dev)
    det = detectors.build(run, spec.name, settings, dev)
    index, split = load_test_split(run)
    if selection is not None:
        split = select(index, split, selection)
    if len(split) == 0:
        raise ConfigError(f"the test split of {run.config.data} has no readable image")
    started = time.perf_counter()
    if ctx is None:
        scored = score_split(det, split, batch_size=batch_size or spec.batch_size, device=dev, progress=progress)
    else:  # this rank scores its contiguous share; the shares are gathered in rank order (= the split's order)
        part = ctx.shard(len(split))
        mine = score_split(det, split.subset(range(part.start, part.stop)), batch_size=batch_size or spec.batch_size,
                           device=dev, progress=progress if ctx.main else None)
        pieces = distributed.gather_objects((mine.scores, mine.maps, mine.extras), ctx)
        maps = [m for _, m, _ in pieces if m is not None and len(m)]
        extras = {k: np.concatenate([e[k] for _, _, e in pieces if k in e]) for k in pieces[0][2]}
        scored = Scored(split, np.concatenate([sc for sc, _, _ in pieces]),
                        np.concatenate(maps) if maps else mine.maps, None, extras)
    seconds = time.perf_counter() - started
    maps = np.clip(scored.maps, -65000, 65000).astype(np.float16) if scored.maps is not None else None
    score_mode = settings.get("score_mode") or (run.config.score_mode if any(s.name == "score_mode" for s in spec.settings)
                                                else spec.name)
    meta = {"score_mode": score_mode, "size": run.config.size, "model": run.config.model,
            "data_seed": run.config.data_seed, "n_skipped": len(split.skipped),
            "settings": {k: v for k, v in settings.items() if k != "cache"}, "seconds": seconds,
            "device": str(dev), "selection": selection is not None}
    return ScoredSet.from_split(run.id, spec.name, split, index.root, scored.scores, maps,
                                data=run.config.data, category=run.config.category or index.category, meta=meta,
                                extras=scored.extras)


def _save(path: Path, ss: ScoredSet, key: str) -> None:
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
    arrays.update({f"extra.{k}": v for k, v in ss.extras.items()})
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
                             meta=info.get("meta") or {},
                             extras={f[len("extra."):]: z[f] for f in z.files if f.startswith("extra.")})
    except (OSError, KeyError, ValueError, TypeError, EOFError, json.JSONDecodeError, zipfile.BadZipFile):
        return None


def scored_set(
    run_dir: Path | str,
    detector: str = "auto",
    *,
    settings: Mapping[str, Any] | None = None,
    device: str = "cpu",
    projection_config: Any = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    refresh: bool = False,
    images: Sequence[str] | None = None,
) -> ScoredSet:
    """The run's test split scored by ``detector``: **the one evaluation path** of the CLI and every page.

    The first call builds the detector through the registry (:func:`core.detectors.registry.build`),
    scores the split (:func:`score_split`) and writes ``<run>/scored/<detector>[_<settings hash>].npz``
    (scores float64, maps float16 at the run's size, masks; atomic). Later calls read it back, or return
    the in-memory copy. The cache is keyed by the detector, its settings, the best checkpoint's size and
    mtime (a retrained run is rescored) and the test files' names, sizes and mtimes (changed data is
    rescored).

    Args:
        run_dir: a run folder.
        detector: a registered detector (``python -m core detectors RUN``) or ``auto`` (the run's default).
        settings: the detector's settings (strings or values); the defaults for what is not given.
        device: where to score on a cache miss (``cpu``, ``auto``, ``cuda``...).
        projection_config: a :class:`core.config.ProjectionConfig` (or its fields as a dict), the older
            spelling of the projection's settings.
        batch_size: scoring batch (default: the detector's).
        progress: ``progress(done, total)`` while scoring.
        refresh: ignore the caches and rescore.
        images: score only these test images (paths relative to the category folder, as in
            :attr:`ScoredSet.paths`), in this order; cached apart from the whole split, under
            ``<detector>[_<settings hash>]@<selection hash>.npz``. The projection and Ano-Unet commands use this.

    Raises:
        core.runs.RunError: not a run or an unusable checkpoint; core.errors.DetectorError: bad detector
        or settings; core.data.index.DatasetError: unusable data.
    """
    run_dir = Path(run_dir)
    cfg = _run_config(run_dir)
    spec = detectors.resolve(str(cfg.get("model")), detector)
    full = _settings(spec, settings, projection_config)
    selection = _selection(images)
    path = _cache_path(run_dir, spec, full, selection)
    index = open_dataset(cfg.get("data", "builtin:synthetic"), cfg.get("category"), seed=int(cfg.get("data_seed", 0)))
    key = _cache_key(run_dir, spec, full, index, selection)
    mkey = str(path.resolve())
    with _lock_for(mkey):  # one scoring per cache file at a time; a second caller then finds it cached
        if not refresh:
            with _LOCKS_GUARD:
                hit = _MEMO.get(mkey)
                if hit is not None and hit[0] == key:
                    return hit[1]
            ss = _load(path, key)
        else:
            ss = None
        ctx = distributed.setup(resolve_device(device)) if distributed.launched() else None
        if any(distributed.gather_objects(ss is None, ctx)):  # under torchrun every rank scores its share, or none
            ss = _score(run_dir, spec, full, device, batch_size, progress, selection, ctx)
            if ctx is None or ctx.main:
                _save(path, ss, key)
            distributed.barrier(ctx)
        with _LOCKS_GUARD:
            _MEMO[mkey] = (key, ss)
        return ss
