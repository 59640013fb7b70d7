"""Effective labels: the dataset's folders, my labels, or both merged, and relabeling a scored set with them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.data.builtin import open_dataset
from core.data.index import (
    DatasetIndex,
    Sample,
)
from core.errors import ConfigError
from core.labels.store import (
    DEFAULT_DEFECT,
    LABEL_SOURCES,
    UNLABELED_FOLDERS,
    LabelRecord,
    LabelStore,
    dataset_key,
    decode_mask,
    file_sha1,
    index_key,
)


@dataclass
class EffectiveLabels:
    """Per-sample labels of one split after combining the dataset's ground truth and the label store."""

    source: str  # "dataset", "mine" or "merged"
    samples: list[Sample]
    relpaths: list[str]
    labels: np.ndarray  # int64: 1 defective, 0 good, -1 unknown (no label, unsure, unlabeled folder)
    defects: list[str | None]  # "good", the defect type ("defective" when none was given), None when unknown
    sources: list[str | None]  # where each label came from: "dataset", "mine" or None (unknown)
    dataset_labels: np.ndarray  # the dataset's own labels (-1 for images in an unlabeled folder)
    mine: list[LabelRecord | None]  # the store's record per sample (None when unlabeled)
    disagreements: int  # samples where the dataset and my label (good/defective) differ
    n_orphaned: int = 0  # stored labels of this dataset whose path is not in the index (any split)
    n_stale: int = 0  # with check_hash: labels ignored because the file changed since labeling

    @property
    def known(self) -> np.ndarray:
        """bool per sample: the label is 0 or 1."""
        return self.labels >= 0

    @property
    def n_mine(self) -> int:
        """Samples with a label in the store (unsure included)."""
        return sum(r is not None for r in self.mine)

    def disagreement_paths(self) -> list[str]:
        """Relative paths of the samples counted in ``disagreements``."""
        return [p for p, d, m in zip(self.relpaths, self.dataset_labels, self.mine)
                if d >= 0 and m is not None and m.label != "unsure" and int(m.label == "defective") != d]

    def painted_mask(self, i: int) -> bytes | None:
        """My painted mask of sample ``i`` (PNG), or None."""
        rec = self.mine[i]
        return rec.mask if rec is not None and rec.label == "defective" else None


def dataset_label(sample: Sample) -> int:
    """The dataset's label of a sample: 0 good, 1 defective, -1 for an image in an unlabeled folder."""
    if sample.defect.lower() in UNLABELED_FOLDERS:
        return -1
    return sample.label


def effective_labels(index: DatasetIndex, split: str | None = "test", source: str = "merged",
                     store: LabelStore | None = None, *, dataset: str | None = None, check_hash: bool = False,
                     with_masks: bool = True) -> EffectiveLabels:
    """Labels of a split's samples (``split=None``: every sample) from the chosen source.

    - ``dataset``: the dataset's own labels (folder names); images of a plain folder's ``unlabeled/``
      (or ``unknown/``, ``unsorted/``) sub-folder are unknown (-1).
    - ``mine``: the label store only; unknown where there is no label or it is ``unsure``.
    - ``merged``: mine where I labeled the image (``unsure`` makes it unknown), else the dataset's.

    A defective label of mine without a defect type takes the dataset's defect type when the dataset
    also says defective, else ``defective``. ``disagreements`` counts the images where the dataset's
    label and my good/defective label differ, whatever ``source`` is.

    Args:
        dataset: the store's dataset key; default :func:`index_key` of ``index``.
        check_hash: ignore (and count as ``n_stale``) labels whose stored content hash no longer
            matches the file (reads every labeled file).
        with_masks: False leaves the painted masks out of ``mine`` (faster when only labels are needed).
    """
    if source not in LABEL_SOURCES:
        raise ConfigError(f"label source must be one of {', '.join(LABEL_SOURCES)}, got {source!r}")
    store = store if store is not None else LabelStore()
    dataset = dataset or index_key(index)
    samples = list(index.samples if split is None else index.split(split))
    root = Path(index.root)
    relpaths = [s.relpath(root) for s in samples]
    stored = store.labels_for(dataset, with_masks=with_masks)
    all_paths = {s.relpath(root) for s in index.samples}
    n_orphaned = sum(p not in all_paths for p in stored)
    mine: list[LabelRecord | None] = []
    n_stale = 0
    for s, p in zip(samples, relpaths):
        rec = stored.get(p)
        if rec is not None and check_hash and rec.content_hash:
            try:
                same = file_sha1(s.path) == rec.content_hash
            except OSError:
                same = False
            if not same:
                n_stale += 1
                rec = None
        mine.append(rec)
    ds = np.array([dataset_label(s) for s in samples], dtype=np.int64)
    labels = np.full(len(samples), -1, dtype=np.int64)
    defects: list[str | None] = []
    sources: list[str | None] = []
    disagreements = 0
    for i, (s, rec) in enumerate(zip(samples, mine)):
        my = -1 if rec is None or rec.label == "unsure" else int(rec.label == "defective")
        if my >= 0 and ds[i] >= 0 and my != ds[i]:
            disagreements += 1
        use_mine = source == "mine" or (source == "merged" and rec is not None)
        if use_mine:
            value = my
            src = "mine" if my >= 0 else None
        else:
            value = int(ds[i])
            src = "dataset" if value >= 0 else None
        labels[i] = value
        sources.append(src)
        if value < 0:
            defects.append(None)
        elif value == 0:
            defects.append("good")
        elif src == "mine":
            defects.append(rec.defect_type or (s.defect if ds[i] == 1 else DEFAULT_DEFECT))
        else:
            defects.append(s.defect)
    return EffectiveLabels(source, samples, relpaths, labels, defects, sources, ds, mine, disagreements, n_orphaned, n_stale)


# ------------------------------------------------------------------------------------------ metrics
def relabel_scored(ss: Any, source: str = "merged", store: LabelStore | None = None,
                   index: DatasetIndex | None = None) -> tuple[Any, EffectiveLabels]:
    """A :class:`core.explorer.ScoredSet` with its labels taken from ``source`` (dataset / mine / merged).

    Labels, defect types and painted masks (resized nearest-neighbour to the maps' size) of the label
    store override the dataset's ground truth for ``mine`` and ``merged``; images without a known label
    get -1 and drop out of every metric. Returns the relabeled set and the :class:`EffectiveLabels`
    (for counts such as ``disagreements``).
    """

    seed = int((ss.meta or {}).get("data_seed") or 0)
    index = index if index is not None else open_dataset(ss.data, ss.category or None, seed=seed)
    eff = effective_labels(index, "test", source, store, dataset=dataset_key(ss.data, ss.category or None, seed=seed))
    known = set(ss.paths)
    labels = {p: int(v) for p, v in zip(eff.relpaths, eff.labels) if p in known}
    defects = {p: (d if d is not None else "unknown") for p, d in zip(eff.relpaths, eff.defects) if p in known}
    masks: dict[str, np.ndarray | None] = {}
    if source != "dataset" and ss.maps is not None:
        size = tuple(ss.maps.shape[1:])
        for i, p in enumerate(eff.relpaths):
            png = eff.painted_mask(i)
            if png is not None and p in known:
                masks[p] = decode_mask(png, size)
    return ss.with_labels(labels, defects=defects, masks=masks or None), eff
