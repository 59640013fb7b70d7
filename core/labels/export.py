"""Export of labels as an MVTec-layout folder that ``train --data`` accepts."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from core.data.images import ImageError, encode_png, read_image, read_mask
from core.data.index import (
    DatasetIndex,
)
from core.errors import ConfigError
from core.labels.effective import effective_labels
from core.labels.store import DEFAULT_DEFECT, LabelStore, decode_mask
from core.workspace import csv_cell_out, workspace_dir


def _flat_name(relpath: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(Path(relpath).with_suffix("")).replace("\\", "/").replace("/", "_")).strip("._") or "image"
    name, k = stem, 2
    while name in used:
        name, k = f"{stem}-{k}", k + 1
    used.add(name)
    return name


EXPORT_MARK = ".anomalylab-export"  # written into every export: only a folder holding it may be overwritten
EXPORT_FORMAT = "anomalylab-mvtec-export/1"
EXPORT_ENTRIES = {"train", "test", "ground_truth", "labels_manifest.csv", EXPORT_MARK}


def _check_overwrite(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier export of this tool (its mark, and only what an export writes):
    never the workspace, a dataset, or a folder holding either."""
    home = workspace_dir().resolve()
    if out_dir == home or home.is_relative_to(out_dir):
        raise ConfigError(f"{out_dir} is or holds the workspace {home}: refusing to overwrite it; export elsewhere")
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise ConfigError(f"{out_dir} exists and is not a folder: refusing to overwrite it")
    mark = out_dir / EXPORT_MARK
    try:
        ok = json.loads(mark.read_text(encoding="utf-8")).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise ConfigError(f"{out_dir} is not an export of this tool (no {EXPORT_MARK} mark): refusing to overwrite it; "
                          "choose an empty or new folder")
    extra = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_ENTRIES)
    if extra:
        raise ConfigError(f"{out_dir} holds files an export does not write ({', '.join(extra[:5])}): refusing to "
                          "overwrite it")


def export_mvtec(index: DatasetIndex, out_dir: Path | str, *, store: LabelStore | None = None, dataset: str | None = None,
                 source: str = "merged", overwrite: bool = False) -> dict[str, Any]:
    """Write the dataset with the effective labels (see :func:`effective_labels`) as one MVTec AD category.

    Layout (``out_dir`` is the category folder, so ``python -m core train --data OUT`` trains on it)::

        OUT/train/good/*.png                      the dataset's train split, minus images I labeled
                                                  defective (they go to test/<defect>) or unsure
        OUT/test/good/*.png                       test images whose effective label is good
        OUT/test/<defect>/*.png                   effective label defective; the defect type is mine,
                                                  else the dataset's, else "defective"
        OUT/ground_truth/<defect>/<name>_mask.png my painted mask (resized nearest-neighbour to the
                                                  image), else the dataset's mask when the dataset
                                                  also says defective; none otherwise
        OUT/labels_manifest.csv                   output file -> source path, label, where it came from

    Choices: images labeled ``unsure`` and test images with no known label are left out; every image
    is re-encoded as PNG (same pixels, gray stays gray) and named after its source path
    (``test/broken/003.png`` -> ``test_broken_003.png``) so relabeled images never collide; unreadable
    files are skipped and listed. The folder is built next to ``out_dir`` and renamed into place.

    Raises:
        ValueError: ``out_dir`` exists and is not empty (without ``overwrite``; with it, when it is not an earlier
            export of this tool, see :func:`_check_overwrite`), or no training image is left.
    """
    out_dir = Path(out_dir).expanduser().resolve()
    src = Path(index.root).resolve()
    if out_dir == src or src in out_dir.parents or out_dir in src.parents:
        raise ConfigError(f"{out_dir} overlaps the dataset folder {src}; export to another folder")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise ConfigError(f"{out_dir} already exists and is not empty (choose another folder or overwrite)")
        _check_overwrite(out_dir)
    eff = effective_labels(index, None, source, store, dataset=dataset)
    tmp = out_dir.parent / f".{out_dir.name}.export-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    used: set[str] = set()
    counts: Counter[str] = Counter()
    summary: dict[str, Any] = {"out": str(out_dir), "train_good": 0, "test": {}, "masks": 0, "excluded_unsure": 0,
                               "excluded_unknown": 0, "skipped": []}
    manifest = io.StringIO()
    mw = csv.writer(manifest, lineterminator="\r\n")
    mw.writerow(["file", "source_path", "label", "defect", "from", "mask"])
    try:
        for i, s in enumerate(eff.samples):
            rec = eff.mine[i]
            value = int(eff.labels[i])
            if rec is not None and rec.label == "unsure" and source != "dataset":
                summary["excluded_unsure"] += 1
                continue
            if s.split == "train" and value != 1:
                # The train split stays training data unless I labeled it defective; unknown = the dataset's good.
                folder, defect = Path("train") / "good", "good"
            elif value < 0:
                summary["excluded_unknown"] += 1
                continue
            else:
                defect = eff.defects[i] or DEFAULT_DEFECT
                folder = Path("test") / defect
            try:
                img = read_image(s.path)
            except ImageError as exc:
                summary["skipped"].append((str(s.path), str(exc)))
                continue
            name = _flat_name(eff.relpaths[i], used)
            (tmp / folder).mkdir(parents=True, exist_ok=True)
            (tmp / folder / f"{name}.png").write_bytes(encode_png(img))
            mask_note = ""
            if defect != "good":
                mask = None
                if rec is not None and rec.mask is not None and eff.sources[i] == "mine":
                    mask, mask_note = decode_mask(rec.mask, img.shape[:2]), "painted"
                elif s.label == 1 and s.mask_path is not None and eff.dataset_labels[i] == 1:
                    try:
                        mask, mask_note = read_mask(s.mask_path, img.shape[:2]), "dataset"
                    except ImageError as exc:
                        summary["skipped"].append((str(s.mask_path), f"mask ignored: {exc}"))
                if mask is not None:
                    (tmp / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                    (tmp / "ground_truth" / defect / f"{name}_mask.png").write_bytes(encode_png(mask.astype(np.uint8) * 255))
                    summary["masks"] += 1
            if folder.parts[0] == "train":
                summary["train_good"] += 1
            else:
                counts[defect] += 1
            mw.writerow([csv_cell_out(c) for c in (f"{folder.as_posix()}/{name}.png", eff.relpaths[i],
                                                   "good" if defect == "good" else "defective", defect,
                                                   eff.sources[i] or "dataset", mask_note)])
        if summary["train_good"] == 0:
            raise ConfigError(f"nothing to train on: no image of {index.root} is left in train/good")
        (tmp / "labels_manifest.csv").write_text(manifest.getvalue(), encoding="utf-8")
        (tmp / EXPORT_MARK).write_text(json.dumps({"format": EXPORT_FORMAT, "source": str(src), "labels": source}) + "\n",
                                       encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["test"] = dict(sorted(counts.items()))
    return summary
