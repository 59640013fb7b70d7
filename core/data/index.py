"""Dataset indexing: which files exist, their split, defect type and mask. No pixels are read here.

Two layouts are understood:

MVTec AD::

    ROOT/CATEGORY/train/good/*.png
    ROOT/CATEGORY/test/good/*.png
    ROOT/CATEGORY/test/<defect>/*.png
    ROOT/CATEGORY/ground_truth/<defect>/<stem>_mask.png     (optional per image)

Plain folder (one category, the folder itself)::

    FOLDER/good/*.png                 normal images (also accepted: normal, ok)
    FOLDER/<defect>/*.png             one folder per defect type
    FOLDER/unlabeled/*.png            optional: test images nobody has labeled yet (also: unlabelled,
                                      unknown, unsorted); label -1, left out of every metric until
                                      labeled on the Label page
    FOLDER/masks/<defect>/<stem>_mask.png or <stem>.png   (optional)

In a plain folder the good images are split deterministically: 80% train, 20% test.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

from core.data.images import is_image_file
from core.errors import AnomalyLabError
from core.workspace import is_below, read_roots

GOOD_NAMES = ("good", "normal", "ok")
UNLABELED_NAMES = ("unlabeled", "unlabelled", "unknown", "unsorted")  # folders of images without a label
MASK_DIR_NAMES = ("ground_truth", "masks", "mask")
MVTEC_LAYOUT = "ROOT/CATEGORY/train/good/*.png, ROOT/CATEGORY/test/<defect>/*.png, ROOT/CATEGORY/ground_truth/<defect>/<name>_mask.png"
FOLDER_LAYOUT = "FOLDER/good/*.png plus one FOLDER/<defect>/ folder per defect type (masks optional in FOLDER/masks/<defect>/)"
FOLDER_TEST_FRACTION = 0.2


class DatasetError(AnomalyLabError):
    """A dataset path or layout that cannot be used; the message names the layout expected."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset."""

    path: Path
    split: str  # "train" or "test"
    defect: str  # "good" or the defect type
    mask_path: Path | None = None

    @property
    def label(self) -> int:
        """1 for defective, 0 for good, -1 for an image of an unlabeled folder (unknown: left out of metrics)."""
        if self.defect == "good":
            return 0
        return -1 if self.defect.lower() in UNLABELED_NAMES else 1

    def relpath(self, root: Path) -> str:
        """Path relative to ``root`` with forward slashes (stable id across machines)."""
        try:
            return self.path.relative_to(root).as_posix()
        except ValueError:
            return self.path.as_posix()


@dataclass
class DatasetIndex:
    """The files of one category, split into train and test."""

    root: Path
    category: str
    layout: str  # "mvtec" or "folder"
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def split(self, name: str) -> list[Sample]:
        """Samples of one split (``"train"`` or ``"test"``)."""
        return [s for s in self.samples if s.split == name]

    @property
    def defect_types(self) -> list[str]:
        """Defect types present in the test split (``good`` and unlabeled folders excluded), sorted."""
        return sorted({s.defect for s in self.samples if s.label == 1})

    def counts(self) -> dict[str, dict[str, int]]:
        """``{split: {defect: count}}``."""
        out: dict[str, dict[str, int]] = {}
        for s in self.samples:
            out.setdefault(s.split, {}).setdefault(s.defect, 0)
            out[s.split][s.defect] += 1
        return out

    @property
    def has_masks(self) -> bool:
        """True when at least one defective test image has a pixel mask."""
        return any(s.mask_path is not None for s in self.samples if s.label == 1)


OUTSIDE_ROOTS = "a link that leads outside the folders this server may read"


def _leaves_roots(p: Path, base: Path) -> bool:
    """True when ``p`` resolves outside its dataset folder ``base`` (resolved) and outside the read roots
    (only when reads are confined: :func:`core.workspace.read_roots`). Unresolvable counts as outside."""
    roots = read_roots()
    if roots is None:
        return False
    try:
        real = p.resolve()
    except (OSError, RuntimeError):
        return True
    return not (real == base or base in real.parents or is_below(real, roots))


def _images_in(folder: Path, skipped: list[tuple[str, str]], base: Path | None = None) -> list[Path]:
    files = []
    base = base or folder.resolve()
    for p in sorted(folder.iterdir()):
        if p.is_dir() or p.name.startswith("."):
            continue
        if _leaves_roots(p, base):  # said without where it leads
            skipped.append((str(p), OUTSIDE_ROOTS))
            continue
        if not p.is_file():  # a pipe, device, socket or broken link: reading it would block or fail
            skipped.append((str(p), "not a regular file (a pipe, device, socket or broken link)"))
            continue
        if is_image_file(p):
            files.append(p)
        else:
            skipped.append((str(p), "not an image file (unknown suffix)"))
    return files


def _find_mask(mask_root: Path | None, defect: str, image: Path, base: Path | None = None) -> Path | None:
    if mask_root is None:
        return None
    folder = mask_root / defect
    for name in (f"{image.stem}_mask.png", f"{image.stem}.png", f"{image.stem}_mask{image.suffix}"):
        candidate = folder / name
        if candidate.is_file() and not (base is not None and _leaves_roots(candidate, base)):
            return candidate
    return None


def is_mvtec_category(path: Path) -> bool:
    """True when ``path`` looks like ``CATEGORY/`` of the MVTec layout (has ``train/good``)."""
    return (path / "train" / "good").is_dir()


def mvtec_categories(root: Path) -> list[str]:
    """Category folder names below an MVTec root (those with ``train/good``), sorted."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_mvtec_category(p))


def index_mvtec(category_dir: Path) -> DatasetIndex:
    """Index one MVTec-layout category folder.

    Raises:
        DatasetError: when ``train/good`` is missing or holds no image.
    """
    category_dir = Path(category_dir)
    if not is_mvtec_category(category_dir):
        raise DatasetError(f"{category_dir} has no train/good folder. Expected the MVTec AD layout: {MVTEC_LAYOUT}")
    skipped: list[tuple[str, str]] = []
    base = category_dir.resolve()
    samples = [Sample(p, "train", "good") for p in _images_in(category_dir / "train" / "good", skipped, base)]
    if not samples:
        raise DatasetError(f"{category_dir / 'train' / 'good'} contains no image. Expected: {MVTEC_LAYOUT}")
    mask_root = category_dir / "ground_truth"
    mask_root = mask_root if mask_root.is_dir() else None
    test_dir = category_dir / "test"
    if test_dir.is_dir():
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            defect = defect_dir.name
            for p in _images_in(defect_dir, skipped, base):
                mask = None if defect == "good" else _find_mask(mask_root, defect, p, base)
                samples.append(Sample(p, "test", defect, mask))
    return DatasetIndex(category_dir, category_dir.name, "mvtec", samples, skipped)


def _stable_fraction(name: str) -> float:
    # crc32, not hash(): Python salts str hashes per process, and the split must not change.
    return (zlib.crc32(name.encode("utf-8")) % 10_000) / 10_000.0


def index_folder(folder: Path) -> DatasetIndex:
    """Index a plain folder: ``good/`` plus one folder per defect type.

    Raises:
        DatasetError: when no good-image folder exists or it is empty.
    """
    folder = Path(folder)
    subdirs = {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    good_name = next((n for n in subdirs if n.lower() in GOOD_NAMES), None)
    if good_name is None:
        raise DatasetError(
            f"{folder} has no folder of good images (named one of {', '.join(GOOD_NAMES)}). "
            f"Expected either the MVTec AD layout ({MVTEC_LAYOUT}) or a plain folder ({FOLDER_LAYOUT})."
        )
    skipped: list[tuple[str, str]] = []
    base = folder.resolve()
    goods = _images_in(subdirs[good_name], skipped, base)
    if not goods:
        raise DatasetError(f"{subdirs[good_name]} contains no image. Expected: {FOLDER_LAYOUT}")
    samples = [
        Sample(p, "test" if _stable_fraction(p.name) < FOLDER_TEST_FRACTION else "train", "good") for p in goods
    ]
    if not any(s.split == "train" for s in samples):  # tiny folders: keep at least one training image
        samples[0] = Sample(samples[0].path, "train", "good")
    mask_root = next((subdirs[n] for n in subdirs if n.lower() in MASK_DIR_NAMES), None)
    for name, sub in subdirs.items():
        if name == good_name or sub == mask_root:
            continue
        for p in _images_in(sub, skipped, base):
            samples.append(Sample(p, "test", name, _find_mask(mask_root, name, p, base)))
    return DatasetIndex(folder, folder.name, "folder", samples, skipped)


def index_path(path: Path, category: str | None = None) -> DatasetIndex:
    """Index a path that is an MVTec root, an MVTec category folder or a plain folder.

    Args:
        path: the folder.
        category: for an MVTec root, which category; default the first one (sorted by name).

    Raises:
        DatasetError: for a missing path, an unknown category, or a layout that is neither.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder. Expected the MVTec AD layout ({MVTEC_LAYOUT}) or {FOLDER_LAYOUT}")
    if is_mvtec_category(path):
        if category not in (None, path.name):
            raise DatasetError(f"{path} is the single category {path.name!r}; category {category!r} is not there")
        return index_mvtec(path)
    cats = mvtec_categories(path)
    if cats:
        if category is None:
            category = cats[0]
        if category not in cats:
            raise DatasetError(f"category {category!r} not found in {path}; available: {', '.join(cats)}")
        return index_mvtec(path / category)
    if category is not None and category != path.name and (path / category).is_dir():
        return index_path(path / category)
    if category not in (None, path.name):
        raise DatasetError(f"{path} is a single plain folder ({path.name!r}); category {category!r} is not there")
    return index_folder(path)


def list_categories(path: Path) -> list[str]:
    """Categories available at ``path`` (MVTec root: its categories; otherwise the folder's name)."""
    path = Path(path)
    if is_mvtec_category(path):
        return [path.name]
    cats = mvtec_categories(path)
    return cats if cats else [path.name]
