"""The label store: people's labels on dataset images, kept in SQLite, with history and undo.

One database per workspace, ``<workspace>/labels.sqlite`` (any other path can be given). An image is
identified by its **dataset key** (see :func:`dataset_key`: ``builtin:synthetic/bottle`` or the absolute
category folder) and its **path relative to the dataset's category folder** (``test/broken/003.png``,
as :meth:`core.data.index.Sample.relpath` gives it); the sha1 of the file's bytes is kept alongside so
a label on an image whose content later changed can be recognised.

Per image: label (``good`` / ``defective`` / ``unsure``), defect type (optional), painted mask
(optional, a binary PNG kept as a BLOB, white = defect), note, author and time (UTC, ISO 8601).
Every change (set, clear, import, undo) is appended to a history table with the state before and
after it, so :meth:`LabelStore.undo` puts back the previous state exactly, including "no label".

Write safety: the database runs in WAL mode; every write is one ``BEGIN IMMEDIATE`` transaction; a
writer that finds the database locked waits (``busy_timeout``) and then retries the whole transaction
with exponential backoff, so several processes and browser sessions can write at the same time without
losing a label. A process killed in the middle of a write loses at most the transaction it was in;
committed labels and the file's integrity survive (SQLite's journal guarantee).

Labels extend and override the dataset's ground truth through :func:`effective_labels`."""

from __future__ import annotations

import base64
import binascii
import csv
import errno
import getpass
import hashlib
import io
import json
import os
import random
import re
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from core.data import synthetic
from core.data.builtin import (
    DIGITS_VERSION,
    builtin_category,
    builtin_name,
    is_builtin,
    open_dataset,
)
from core.data.images import ImageError, encode_png, is_image_file, read_image
from core.data.index import (
    UNLABELED_NAMES,
    DatasetError,
    DatasetIndex,
    index_path,
    is_mvtec_category,
    mvtec_categories,
)
from core.errors import AnomalyLabError
from core.workspace import (
    AccessError,
    atomic_write_text,
    check_allowed,
    csv_cell_in,
    csv_cell_out,
    is_below,
    read_roots,
    workspace_dir,
)

DB_FILE = "labels.sqlite"


SCHEMA_VERSION = 1


LABELS = ("good", "defective", "unsure")


DEFAULT_DEFECT = "defective"


"""Defect folder of the MVTec export for images labeled defective without a defect type."""


UNLABELED_FOLDERS = UNLABELED_NAMES  # plain-folder sub-folders of images without a label (core.data.index)


"""Plain-folder sub-folders whose images have no dataset label (``effective_labels`` gives them -1)."""


REQUIRED_COLUMNS = ("dataset", "path", "label")


EXPORT_COLUMNS = ("dataset", "path", "label", "defect_type", "note", "author", "time", "content_hash", "mask_png_base64")


LABEL_SOURCES = ("dataset", "mine", "merged")


BUSY_TIMEOUT_S = 5.0


"""SQLite's own wait for a lock, per attempt."""


LOCK_DEADLINE_S = 60.0


"""Total time a write keeps retrying ``database is locked`` before giving up."""


_MAX_DEFECT_LEN = 100
#: One field-size policy for every way a label comes in (the page, CSV, JSON): a note holds at most this many
#: characters and a mask's base64 PNG at most MAX_MASK_CHARS, and the CSV reader accepts fields that long, so an
#: export always imports again (Python's csv stopped at 131,072 characters; JSON had no limit).
MAX_NOTE_CHARS = 10_000
MAX_MASK_CHARS = 16 * 1024 * 1024
MAX_TEXT_CHARS = 1_000  # dataset, path, author, time, content hash
csv.field_size_limit(max(csv.field_size_limit(), MAX_MASK_CHARS + 1024))


_BUILTIN_KEY = re.compile(r"^builtin:(?P<name>[A-Za-z0-9_]+)/(?P<category>[^/@]+)(?:@seed(?P<seed>\d+))?$")


class LabelError(AnomalyLabError):
    """A label, defect type, mask or path that cannot be stored, with the reason."""


class LabelStoreError(AnomalyLabError):
    """The label database cannot be used (not a database, a newer schema, locked for too long)."""


class LabelImportError(LabelError):
    """A bad import file; nothing from it was applied. ``rows`` holds ``(row number, reason)`` pairs
    (row 1 = the first object of a JSON list, or the first line after a CSV header)."""

    def __init__(self, message: str, rows: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.rows = rows or []


class _Keep:
    """Sentinel: keep the stored value (see :meth:`LabelStore.set_label`)."""

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Any = _Keep()


def dataset_key(data: str, category: str | None = None, *, seed: int = 0) -> str:
    """The identifier of a dataset category in the label store.

    Built-in data: ``builtin:synthetic/bottle``, ``builtin:digits/7`` (``@seed<N>`` appended for a
    synthetic seed other than 0). A folder: the absolute path of the *category* folder (for an MVTec
    root plus a category, ``ROOT/CATEGORY``; for a category or plain folder, the folder itself), with
    symlinks resolved, so every way of naming the same data gives the same key. ``category=None``
    means the first category, as :func:`core.data.builtin.open_dataset` does.

    Raises:
        DatasetError: an unknown built-in name or category.
    """

    data = str(data)
    if is_builtin(data):
        name = builtin_name(data)
        category = builtin_category(data, category)
        suffix = f"@seed{seed}" if name == "synthetic" and seed else ""
        return f"builtin:{name}/{category}{suffix}"
    return _category_folder(Path(data).expanduser(), category).as_posix()


def _category_folder(path: Path, category: str | None) -> Path:
    # Mirrors core.data.index.index_path without listing the image files.
    path = path.resolve()
    if not path.is_dir() or is_mvtec_category(path):
        return path
    cats = mvtec_categories(path)
    if cats:
        return path / (category or cats[0])
    if category and category != path.name and (path / category).is_dir():
        return _category_folder(path / category, None)
    return path


def parse_dataset_key(key: str) -> tuple[str, str | None, int]:
    """``(data spec, category, seed)`` of a key, suitable for :func:`core.data.builtin.open_dataset`."""
    m = _BUILTIN_KEY.match(key)
    if m:
        return f"builtin:{m['name']}", m["category"], int(m["seed"] or 0)
    return key, None, 0


def open_dataset_key(key: str) -> DatasetIndex:
    """Open the dataset a key names (built-in data is generated on first use).

    Raises:
        DatasetError: when it cannot be opened.
    """

    spec, category, seed = parse_dataset_key(key)
    if is_builtin(spec):
        return open_dataset(spec, category, seed=seed)
    if is_builtin(key):
        raise DatasetError(f"bad built-in dataset key {key!r}; expected builtin:NAME/CATEGORY")
    if not Path(spec).is_absolute():
        raise DatasetError(f"dataset key {key!r} is neither builtin:NAME/CATEGORY nor an absolute folder")
    return index_path(Path(spec))


def canonical_key(key: str) -> str:
    """A dataset key as :func:`dataset_key` writes it: built-in keys checked, an existing folder resolved
    to its absolute category folder; anything else returned as given.

    Raises:
        DatasetError: a malformed or unknown built-in key.
    """

    key = str(key).strip()
    if is_builtin(key):
        spec, category, seed = parse_dataset_key(key)
        if category is None:
            raise DatasetError(f"bad built-in dataset key {key!r}; expected builtin:NAME/CATEGORY (e.g. builtin:synthetic/bottle)")
        return dataset_key(spec, category, seed=seed)
    if Path(key).expanduser().is_dir():
        return dataset_key(key)
    return key


def index_key(index: DatasetIndex) -> str:
    """The dataset key of an index (built-in caches are recognised by their workspace folder)."""
    root = Path(index.root).resolve()
    cache = (workspace_dir() / "cache").resolve()
    parent = root.parent
    if parent.parent == cache / "synthetic":
        m = re.fullmatch(re.escape(synthetic.SYNTHETIC_VERSION) + r"-seed(\d+)", parent.name)
        if m:
            return dataset_key("builtin:synthetic", index.category, seed=int(m[1]))
    if parent == cache / "digits" / DIGITS_VERSION:
        return dataset_key("builtin:digits", index.category)
    return root.as_posix()


def file_sha1(path: Path | str) -> str:
    """sha1 hex digest of a file's bytes; OSError for anything but a regular file (a FIFO would block here)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def now_iso() -> str:
    """The current UTC time as ISO 8601 with milliseconds (``2024-05-01T12:00:00.000+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def default_author() -> str:
    """The login name of this process's user (``unknown`` when there is none)."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers): getpass raises OSError/KeyError
        return "unknown"


def normalize_note(note: Any) -> str:
    """A note as stored: text of at most :data:`MAX_NOTE_CHARS` characters (None = empty)."""
    return "" if note is None else _text("note", note, MAX_NOTE_CHARS)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "true/false", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def _text(name: str, value: Any, limit: int = MAX_TEXT_CHARS) -> str:
    """A text field of an imported row; JSON objects, lists, numbers are refused (they were stored as their repr)."""
    if not isinstance(value, str):
        raise LabelError(f"{name} must be text, got {_type_name(value)}")
    if len(value) > limit:
        raise LabelError(f"{name} is {len(value):,} characters long (at most {limit:,})")
    return value


def normalize_path(path: str) -> str:
    """A relative path with forward slashes and no ``./``; raises LabelError for absolute or ``..`` paths."""
    p = str(path).strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    if not p:
        raise LabelError("empty path")
    if p.startswith("/") or re.match(r"^[A-Za-z]:/", p):
        raise LabelError(f"path {path!r} must be relative to the dataset folder")
    if ".." in p.split("/"):
        raise LabelError(f"path {path!r} must not contain '..'")
    return p


def normalize_label(label: str) -> str:
    """``good``, ``defective`` or ``unsure`` (case and surrounding spaces ignored)."""
    value = str(label).strip().lower() if label is not None else ""
    if value not in LABELS:
        raise LabelError(f"unknown label {label!r} (expected {', '.join(LABELS)})")
    return value


def normalize_defect(defect: str | None) -> str | None:
    """A defect type usable as a folder name, or None for an empty value."""
    if defect is None:
        return None
    value = str(defect).strip()
    if not value:
        return None
    if value.lower() == "good":
        raise LabelError("defect type 'good' is not a defect (use the label good)")
    if value in (".", "..") or "/" in value or "\\" in value or any(ord(c) < 32 for c in value):
        raise LabelError(f"defect type {defect!r} must not contain '/', '\\' or control characters")
    if len(value) > _MAX_DEFECT_LEN:
        raise LabelError(f"defect type is longer than {_MAX_DEFECT_LEN} characters")
    return value


def normalize_mask(mask: bytes | np.ndarray | None) -> bytes | None:
    """Validate a painted mask and return it as a canonical PNG (8-bit gray, 0 or 255).

    Accepts PNG (or any image) bytes or an array ``(H, W)``; it must be binary: bool, or values only
    in {0, 1} or {0, 255} (for a colour image, the channel maximum). ``None`` means no mask.

    Raises:
        LabelError: for bytes that do not decode or a mask that is not binary.
    """
    if mask is None:
        return None
    if isinstance(mask, (bytes, bytearray, memoryview)):
        try:
            arr = read_image(bytes(mask), name="mask")
        except ImageError as exc:
            raise LabelError(f"mask: {str(exc).removeprefix('mask: ')}") from None
    else:
        arr = np.asarray(mask)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim != 2:
            raise LabelError(f"mask must be a 2-D array (H, W), got shape {arr.shape}")
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.size == 0:
        raise LabelError("mask is empty (0 pixels)")
    if arr.dtype != bool:
        values = set(np.unique(arr).tolist())
        if not (values <= {0, 1} or values <= {0, 255}):
            shown = ", ".join(str(v) for v in sorted(values)[:6]) + (", ..." if len(values) > 6 else "")
            raise LabelError(f"mask is not binary: values {shown}; expected only 0 and 255 (or 0 and 1)")
    return encode_png((arr > 0).astype(np.uint8) * 255)


def decode_mask(png: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """A stored mask as bool ``(H, W)``, resized nearest-neighbour to ``size = (H, W)`` when given."""
    import cv2

    arr = read_image(png, name="mask")
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    mask = arr > 127
    if size is not None and mask.shape != tuple(size):
        mask = cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST) > 0
    return mask


def _check_time(value: str) -> str:
    try:
        parsed = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise LabelError(f"time {value!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def _check_hash(value: str) -> str:
    v = str(value).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{40}", v):
        raise LabelError(f"content_hash {value!r} is not a sha1 hex digest")
    return v


@dataclass(frozen=True)
class LabelRecord:
    """The stored label of one image."""

    dataset: str
    path: str
    label: str
    defect_type: str | None = None
    mask: bytes | None = None  # PNG, 8-bit gray, 255 = defect
    note: str = ""
    author: str = ""
    time: str = ""
    content_hash: str | None = None

    @property
    def has_mask(self) -> bool:
        return self.mask is not None

    def mask_array(self, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """The painted mask as bool ``(H, W)`` (resized to ``size`` when given), or None."""
        return None if self.mask is None else decode_mask(self.mask, size)

    def to_row(self, *, with_mask: bool = True) -> dict[str, Any]:
        """One export row (the columns of :data:`EXPORT_COLUMNS`; the mask base64-encoded)."""
        row = {"dataset": self.dataset, "path": self.path, "label": self.label, "defect_type": self.defect_type or "",
               "note": self.note, "author": self.author, "time": self.time, "content_hash": self.content_hash or ""}
        if with_mask:
            row["mask_png_base64"] = base64.b64encode(self.mask).decode("ascii") if self.mask is not None else ""
        return row

    def _state(self) -> tuple:
        return (self.label, self.defect_type, self.mask, self.note, self.content_hash)


@dataclass(frozen=True)
class HistoryEntry:
    """One change of one image's label: the state before and after it (None = no label)."""

    id: int
    dataset: str
    path: str
    action: str  # "set", "clear", "import" or "undo"
    time: str
    author: str
    before: LabelRecord | None
    after: LabelRecord | None
    undone: bool  # reverted by a later undo
    undoes: int | None = None  # for an undo: the id of the change it reverted


@dataclass(frozen=True)
class ImportResult:
    """What :meth:`LabelStore.import_rows` did."""

    rows: int
    changed: int
    unchanged: int
    unverified: list[str] = field(default_factory=list)  # datasets that could not be opened: paths checked on disk


_STATE_COLS = ("label", "defect_type", "mask", "note", "author", "time", "content_hash")


_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS labels (
    dataset TEXT NOT NULL,
    path TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ({", ".join(repr(v) for v in LABELS)})),
    defect_type TEXT,
    mask BLOB,
    note TEXT NOT NULL DEFAULT '',
    author TEXT NOT NULL DEFAULT '',
    time TEXT NOT NULL,
    content_hash TEXT,
    PRIMARY KEY (dataset, path)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    path TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('set', 'clear', 'import', 'undo')),
    time TEXT NOT NULL,
    author TEXT NOT NULL,
    undoes INTEGER,
    undone_by INTEGER,
    {", ".join(f"before_{c}" for c in _STATE_COLS)},
    {", ".join(f"after_{c}" for c in _STATE_COLS)}
);
CREATE INDEX IF NOT EXISTS history_by_image ON history (dataset, path, id);
"""


def _record(dataset: str, path: str, values: Iterable[Any]) -> LabelRecord | None:
    label, defect, mask, note, author, t, chash = values
    if label is None:
        return None
    return LabelRecord(dataset, path, label, defect, bytes(mask) if mask is not None else None, note or "", author or "", t, chash)


def _values(rec: LabelRecord | None) -> tuple:
    if rec is None:
        return (None,) * len(_STATE_COLS)
    return (rec.label, rec.defect_type, rec.mask, rec.note, rec.author, rec.time, rec.content_hash)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class LabelStore:
    """Labels of one workspace (or the database file given).

    Every method opens its own short-lived connection, so one store object can be shared by threads
    (Streamlit sessions) and many processes can use the same file.
    """

    def __init__(self, path: Path | str | None = None, *, busy_timeout: float = BUSY_TIMEOUT_S,
                 lock_deadline: float = LOCK_DEADLINE_S) -> None:
        self.path = Path(path).expanduser().resolve() if path is not None else workspace_dir() / DB_FILE
        self.busy_timeout = float(busy_timeout)
        self.lock_deadline = float(lock_deadline)
        self.retries = 0  # transactions retried after "database is locked" (for tests and diagnostics)
        self._ready = False

    def __repr__(self) -> str:
        return f"LabelStore({str(self.path)!r})"

    # -- connections and transactions

    def _connect(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise LabelStoreError(f"{self.path} is a folder, not a label database")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(self.path), timeout=self.busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            con.execute("PRAGMA synchronous = FULL")
        except BaseException:
            con.close()
            raise
        return con

    def _retrying(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool) -> Any:
        deadline = time.monotonic() + self.lock_deadline
        delay = 0.005
        while True:
            con = None
            try:
                con = self._connect()  # opening can meet a lock too (schema read, WAL recovery): retried alike
                if write:
                    con.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(con)
                        con.execute("COMMIT")
                    except BaseException:
                        if con.in_transaction:
                            try:
                                con.execute("ROLLBACK")
                            except sqlite3.Error:
                                pass  # closing the connection rolls back too
                        raise
                    return result
                return fn(con)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise LabelStoreError(f"{self.path}: the label database stayed locked for {self.lock_deadline:.0f} s") from None
                self.retries += 1
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)
            except sqlite3.DatabaseError as exc:
                if type(exc) is not sqlite3.DatabaseError:  # integrity and programming errors are bugs: keep them
                    raise
                raise LabelStoreError(f"{self.path}: cannot open the label database ({exc})") from None
            finally:
                if con is not None:
                    con.close()

    def _ensure(self) -> None:
        if self._ready:
            return

        def setup(con: sqlite3.Connection) -> None:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LabelStoreError(f"{self.path} was written by a newer AnomalyLab (schema {version} > {SCHEMA_VERSION})")
            if version < SCHEMA_VERSION:
                con.executescript("BEGIN IMMEDIATE;" + _SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

        def wal(con: sqlite3.Connection) -> None:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise LabelStoreError(f"{self.path}: cannot switch the database to WAL mode (got {mode})")

        self._retrying(wal, write=False)
        self._retrying(setup, write=False)
        self._ready = True

    def _run(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool) -> Any:
        self._ensure()
        try:
            return self._retrying(fn, write=write)
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
            self._ready = False  # the file was replaced or deleted since this store created the tables
            self._ensure()
            return self._retrying(fn, write=write)

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return self._run(fn, write=False)

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return self._run(fn, write=True)

    # -- low-level state changes (inside a transaction)

    @staticmethod
    def _current(con: sqlite3.Connection, dataset: str, path: str) -> LabelRecord | None:
        row = con.execute(f"SELECT {', '.join(_STATE_COLS)} FROM labels WHERE dataset = ? AND path = ?", (dataset, path)).fetchone()
        return _record(dataset, path, row) if row else None

    @staticmethod
    def _put(con: sqlite3.Connection, dataset: str, path: str, rec: LabelRecord | None) -> None:
        if rec is None:
            con.execute("DELETE FROM labels WHERE dataset = ? AND path = ?", (dataset, path))
        else:
            con.execute(f"INSERT OR REPLACE INTO labels (dataset, path, {', '.join(_STATE_COLS)}) VALUES (?, ?, {', '.join('?' * len(_STATE_COLS))})",
                        (dataset, path, *_values(rec)))

    @staticmethod
    def _log(con: sqlite3.Connection, dataset: str, path: str, action: str, author: str, before: LabelRecord | None,
             after: LabelRecord | None, undoes: int | None = None, when: str | None = None) -> int:
        cols = ["dataset", "path", "action", "time", "author", "undoes"] + [f"before_{c}" for c in _STATE_COLS] + [f"after_{c}" for c in _STATE_COLS]
        cur = con.execute(f"INSERT INTO history ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                          (dataset, path, action, when or now_iso(), author, undoes, *_values(before), *_values(after)))
        return int(cur.lastrowid)

    def _change(self, con: sqlite3.Connection, dataset: str, path: str, action: str, author: str,
                make: Callable[[LabelRecord | None], LabelRecord | None]) -> tuple[LabelRecord | None, bool]:
        before = self._current(con, dataset, path)
        after = make(before)
        if (before is None and after is None) or (before is not None and after is not None and before._state() == after._state()):
            return before, False
        self._put(con, dataset, path, after)
        self._log(con, dataset, path, action, author, before, after)
        return after, True

    @staticmethod
    def _merge(dataset: str, path: str, before: LabelRecord | None, label: str, defect_type: Any, mask: Any, note: Any,
               author: str, when: str, content_hash: Any) -> LabelRecord:
        if label == "good":
            if defect_type is not KEEP and defect_type is not None:
                raise LabelError(f"{path}: a good image has no defect type (got {defect_type!r})")
            if mask is not KEEP and mask is not None:
                raise LabelError(f"{path}: a good image has no defect mask")
            defect_type, mask = None, None
        else:
            if defect_type is KEEP:
                defect_type = before.defect_type if before is not None else None
            if mask is KEEP:
                mask = before.mask if before is not None else None
        if note is KEEP:
            note = before.note if before is not None else ""
        if content_hash is KEEP:
            content_hash = before.content_hash if before is not None else None
        return LabelRecord(dataset, path, label, defect_type, mask, note or "", author, when, content_hash)

    # -- public API

    def get(self, dataset: str, path: str) -> LabelRecord | None:
        """The label of one image, or None."""
        path = normalize_path(path)
        return self._read(lambda con: self._current(con, dataset, path))

    def set_label(self, dataset: str, path: str, label: str, *, defect_type: str | None = KEEP,
                  mask: bytes | np.ndarray | None = KEEP, note: str | None = KEEP, author: str | None = None,
                  content_hash: str | None = None, image_file: Path | str | None = None) -> LabelRecord:
        """Label one image and return the stored record.

        Args:
            dataset: the dataset key (:func:`dataset_key`).
            path: the image's path relative to the category folder.
            label: ``good``, ``defective`` or ``unsure``.
            defect_type, mask, note: the new values; left out (``KEEP``), the stored ones are kept, except
                that a ``good`` label never has a defect type or mask (they are cleared; giving one is an
                error). ``None`` clears. The mask: PNG bytes or an ``(H, W)`` array, binary.
            author: default the login name of this process.
            content_hash: sha1 of the image file; computed from ``image_file`` when that is given instead.

        A call that changes nothing (same label, defect type, mask, note and hash) writes nothing.

        Raises:
            LabelError: a bad label, defect type, mask or path.
        """
        path = normalize_path(path)
        label = normalize_label(label)
        if defect_type is not KEEP:
            defect_type = normalize_defect(defect_type)
        if mask is not KEEP:
            mask = normalize_mask(mask)
        if note is not KEEP:
            note = normalize_note(note)
        if content_hash is not None:
            content_hash = _check_hash(content_hash)
        elif image_file is not None:
            content_hash = file_sha1(image_file)
        else:
            content_hash = KEEP
        author = author or default_author()
        when = now_iso()

        def apply(con: sqlite3.Connection) -> LabelRecord:
            rec, _ = self._change(con, dataset, path, "set", author,
                                  lambda before: self._merge(dataset, path, before, label, defect_type, mask, note, author, when, content_hash))
            return rec

        return self._write(apply)

    def clear(self, dataset: str, path: str, *, author: str | None = None) -> bool:
        """Remove the label of one image (undoable). True when there was one."""
        path = normalize_path(path)
        author = author or default_author()
        return self._write(lambda con: self._change(con, dataset, path, "clear", author, lambda before: None)[1])

    def can_undo(self, dataset: str, path: str) -> bool:
        """True when the image has a change that :meth:`undo` would revert."""
        path = normalize_path(path)
        return self._read(lambda con: self._last_change(con, dataset, path) is not None)

    @staticmethod
    def _last_change(con: sqlite3.Connection, dataset: str, path: str) -> tuple | None:
        cols = ", ".join(f"before_{c}" for c in _STATE_COLS)
        return con.execute(f"SELECT id, {cols} FROM history WHERE dataset = ? AND path = ? AND action != 'undo' AND undone_by IS NULL "
                           "ORDER BY id DESC LIMIT 1", (dataset, path)).fetchone()

    def undo(self, dataset: str, path: str, *, author: str | None = None) -> LabelRecord | None:
        """Revert the image's latest change that is not yet undone and return the state now stored.

        The state before that change comes back exactly (label, defect type, mask, note, author,
        time and hash), or no label when the change was the first label. Repeated calls walk further
        back. The undo is itself kept in the history. With nothing to undo, nothing is written and
        the current state is returned (see :meth:`can_undo`).
        """
        path = normalize_path(path)
        author = author or default_author()

        def apply(con: sqlite3.Connection) -> LabelRecord | None:
            row = self._last_change(con, dataset, path)
            current = self._current(con, dataset, path)
            if row is None:
                return current
            change_id, restored = row[0], _record(dataset, path, row[1:])
            self._put(con, dataset, path, restored)
            undo_id = self._log(con, dataset, path, "undo", author, current, restored, undoes=change_id)
            con.execute("UPDATE history SET undone_by = ? WHERE id = ?", (undo_id, change_id))
            return restored

        return self._write(apply)

    def history(self, dataset: str, path: str) -> list[HistoryEntry]:
        """Every change of one image, oldest first."""
        path = normalize_path(path)
        cols = ", ".join([f"before_{c}" for c in _STATE_COLS] + [f"after_{c}" for c in _STATE_COLS])
        n = len(_STATE_COLS)

        def read(con: sqlite3.Connection) -> list[HistoryEntry]:
            rows = con.execute(f"SELECT id, action, time, author, undoes, undone_by, {cols} FROM history "
                               "WHERE dataset = ? AND path = ? ORDER BY id", (dataset, path)).fetchall()
            return [HistoryEntry(r[0], dataset, path, r[1], r[2], r[3], _record(dataset, path, r[6:6 + n]),
                                 _record(dataset, path, r[6 + n:]), r[5] is not None, r[4]) for r in rows]

        return self._read(read)

    def labels_for(self, dataset: str, *, with_masks: bool = True) -> dict[str, LabelRecord]:
        """``{relative path: record}`` of one dataset (masks left out when ``with_masks`` is False)."""
        cols = ", ".join(c if c != "mask" or with_masks else "NULL" for c in _STATE_COLS)

        def read(con: sqlite3.Connection) -> dict[str, LabelRecord]:
            rows = con.execute(f"SELECT path, {cols} FROM labels WHERE dataset = ? ORDER BY path", (dataset,)).fetchall()
            return {r[0]: _record(dataset, r[0], r[1:]) for r in rows}

        return self._read(read)

    def all_labels(self, dataset: str | None = None, *, with_masks: bool = True) -> list[LabelRecord]:
        """Every label (of one dataset when given), sorted by dataset and path."""
        cols = ", ".join(c if c != "mask" or with_masks else "NULL" for c in _STATE_COLS)
        where, args = ("WHERE dataset = ?", (dataset,)) if dataset is not None else ("", ())

        def read(con: sqlite3.Connection) -> list[LabelRecord]:
            rows = con.execute(f"SELECT dataset, path, {cols} FROM labels {where} ORDER BY dataset, path", args).fetchall()
            return [_record(r[0], r[1], r[2:]) for r in rows]

        return self._read(read)

    def count(self, dataset: str | None = None) -> int:
        """Number of labeled images (of one dataset when given)."""
        where, args = ("WHERE dataset = ?", (dataset,)) if dataset is not None else ("", ())
        return self._read(lambda con: con.execute(f"SELECT COUNT(*) FROM labels {where}", args).fetchone()[0])

    def stats(self, dataset: str | None = None) -> dict[str, Any]:
        """Counts: ``total``, per label, ``with_mask``, ``changes`` (history rows) and per dataset
        (``datasets: {key: {total, good, defective, unsure, with_mask, defect_types: {type: n}}}``)."""
        where, args = ("WHERE dataset = ?", (dataset,)) if dataset is not None else ("", ())

        def read(con: sqlite3.Connection) -> dict[str, Any]:
            rows = con.execute(f"SELECT dataset, label, defect_type, mask IS NOT NULL, COUNT(*) FROM labels {where} "
                               "GROUP BY dataset, label, defect_type, mask IS NOT NULL", args).fetchall()
            changes = con.execute(f"SELECT COUNT(*) FROM history {where}", args).fetchone()[0]
            return rows, changes

        rows, changes = self._read(read)
        out: dict[str, Any] = {"db": str(self.path), "total": 0, **{lab: 0 for lab in LABELS}, "with_mask": 0,
                               "changes": changes, "datasets": {}}
        for ds, label, defect, has_mask, n in rows:
            d = out["datasets"].setdefault(ds, {"total": 0, **{lab: 0 for lab in LABELS}, "with_mask": 0, "defect_types": {}})
            for target in (out, d):
                target["total"] += n
                target[label] += n
                target["with_mask"] += n if has_mask else 0
            if label == "defective":
                name = defect or DEFAULT_DEFECT
                d["defect_types"][name] = d["defect_types"].get(name, 0) + n
        for d in out["datasets"].values():
            d["defect_types"] = dict(sorted(d["defect_types"].items()))
        return out

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` of the database file (``"ok"`` when intact)."""
        return self._read(lambda con: "; ".join(r[0] for r in con.execute("PRAGMA integrity_check").fetchall()))

    # -- import / export

    def import_rows(self, rows: Iterable[Mapping[str, Any]], *, author: str | None = None, check_paths: bool = True,
                    progress: Callable[[int, int], None] | None = None,
                    roots: list[Path] | None = None) -> ImportResult:
        """Apply many labels in ONE transaction: all of them, or (on any bad row) none.

        Each row needs ``dataset``, ``path`` and ``label``; optional keys: ``defect_type``, ``note``,
        ``author``, ``time``, ``content_hash``, ``mask_png_base64``. A key that is absent keeps the stored
        value as in :meth:`set_label`; present but empty clears it. ``author``/``time`` in a row are
        kept (so an export re-imports unchanged); otherwise ``author`` (default: the login name) and now.
        With ``check_paths``, every path must be one of its dataset's images; for a dataset that cannot be
        opened as a whole, each path must be a regular image file in its folder. The content hash is computed
        from the file when there is no ``content_hash`` key. A dataset given as a folder path is stored under
        its :func:`dataset_key`. With ``roots`` (the app passes its allowed folders), a dataset folder outside
        them is refused, with the same words whether it exists or not. Text fields must be text (JSON numbers,
        objects or lists are refused); a note holds at most :data:`MAX_NOTE_CHARS` characters.

        Raises:
            LabelImportError: naming every bad row (number, 1-based, and reason); nothing was applied.
        """
        rows = list(rows)
        author = author or default_author()
        errors: list[tuple[int, str]] = []
        parsed: list[dict[str, Any]] = []
        seen: dict[tuple[str, str], int] = {}
        for number, row in enumerate(rows, start=1):
            try:
                item = self._parse_row(row, roots)
            except LabelError as exc:
                errors.append((number, str(exc)))
                continue
            key = (item["dataset"], item["path"])
            if key in seen:
                errors.append((number, f"{item['path']} repeats row {seen[key]}"))
                continue
            seen[key] = number
            item["row"] = number
            parsed.append(item)
        unverified: list[str] = []
        if check_paths:
            by_dataset: dict[str, list[dict[str, Any]]] = {}
            for item in parsed:
                by_dataset.setdefault(item["dataset"], []).append(item)
            for ds, items in by_dataset.items():
                try:
                    index = open_dataset_key(ds)
                    files = {s.relpath(index.root): s.path for s in index.samples}
                except (DatasetError, OSError) as exc:
                    files = _files_on_disk(ds, [it["path"] for it in items], exc)
                    unverified.append(ds)
                opened = ds not in unverified
                for item in items:
                    if item["path"] not in files:
                        errors.append((item["row"], f"{item['path']} is not an image of dataset {ds}" + (
                            "" if opened else " (the dataset cannot be opened, so each file was looked for on disk)")))
                    elif item["content_hash"] is KEEP:  # no content_hash column: computed from the file
                        try:
                            item["content_hash"] = file_sha1(files[item["path"]])
                        except OSError as exc:
                            errors.append((item["row"], f"{item['path']}: cannot read ({exc.strerror or exc})"))
        if errors:
            raise LabelImportError(_import_message(errors, len(rows)), sorted(errors))
        when = now_iso()

        def apply(con: sqlite3.Connection) -> int:
            changed = 0
            for i, it in enumerate(parsed):
                ds, path = it["dataset"], it["path"]

                def make(before: LabelRecord | None, it: dict[str, Any] = it) -> LabelRecord:
                    try:
                        return self._merge(ds, path, before, it["label"], it["defect_type"], it["mask"], it["note"],
                                           it["author"] or author, it["time"] or when, it["content_hash"])
                    except LabelError as exc:  # e.g. a good label with a mask: reported with its row
                        raise LabelImportError(_import_message([(it["row"], str(exc))], len(rows)), [(it["row"], str(exc))]) from None

                changed += self._change(con, ds, path, "import", author, make)[1]
                if progress is not None:
                    progress(i + 1, len(parsed))
            return changed

        changed = self._write(apply) if parsed else 0
        return ImportResult(len(parsed), changed, len(parsed) - changed, unverified)

    @staticmethod
    def _parse_row(row: Any, roots: list[Path] | None = None) -> dict[str, Any]:
        if not isinstance(row, Mapping):
            raise LabelError(f"expected an object with dataset, path and label, got {type(row).__name__}")
        if None in row:  # csv.DictReader: more values than header columns
            raise LabelError("more values than columns")
        missing = [k for k in REQUIRED_COLUMNS if row.get(k) in (None, "")]
        if missing:
            raise LabelError(f"missing {', '.join(missing)}")
        problems: list[str] = []
        for key in REQUIRED_COLUMNS:
            _text(key, row[key])
        dataset = row["dataset"].strip()
        if roots is not None and not is_builtin(dataset):
            # checked before anything touches the path: the message is the same whether it exists or not
            try:
                check_allowed(dataset, roots)
            except AccessError:
                raise LabelError(f"dataset {dataset!r} is outside the folders this server may read") from None
        try:
            out: dict[str, Any] = {"dataset": canonical_key(dataset)}
        except DatasetError as exc:
            raise LabelError(str(exc)) from None

        def take(key: str, fn: Callable[[Any], Any], default: Any = KEEP) -> Any:
            if key not in row:
                return default
            try:
                return fn(row[key])
            except LabelError as exc:
                problems.append(str(exc))
                return None

        out["path"] = take("path", normalize_path)
        out["label"] = take("label", normalize_label)
        out["note"] = take("note", normalize_note)
        out["defect_type"] = take("defect_type", lambda v: normalize_defect(_text("defect_type", v)) if v is not None else None)
        out["author"] = take("author", lambda v: _text("author", v).strip() or None if v is not None else None, None)
        out["time"] = take("time", lambda v: _check_time(_text("time", v)) if v not in (None, "") else None, None)
        out["content_hash"] = take("content_hash",
                                   lambda v: _check_hash(_text("content_hash", v)) if v not in (None, "") else None)
        out["mask"] = take("mask_png_base64",
                           lambda v: _mask_from_base64(_text("mask_png_base64", v, MAX_MASK_CHARS)) if v else None)
        if out["label"] == "good" and any(out[k] not in (KEEP, None) for k in ("defect_type", "mask")):
            problems.append("a good image has no defect type or mask")
        if problems:
            raise LabelError("; ".join(problems))
        return out

    def export_rows(self, dataset: str | None = None, *, with_masks: bool = True) -> list[dict[str, Any]]:
        """All labels (of one dataset) as rows with the columns of :data:`EXPORT_COLUMNS`."""
        return [r.to_row(with_mask=with_masks) for r in self.all_labels(dataset, with_masks=with_masks)]

    def export_csv(self, out: Path | str | None = None, dataset: str | None = None) -> str:
        """The labels as CSV (header :data:`EXPORT_COLUMNS`); written atomically to ``out`` when given."""
        buf = io.StringIO()
        # RFC 4180 line ends: with "\n" alone, a note holding a carriage return was written unquoted and broke the row
        writer = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), lineterminator="\r\n")
        writer.writeheader()
        writer.writerows({k: csv_cell_out(v) for k, v in row.items()} for row in self.export_rows(dataset))
        text = buf.getvalue()
        if out is not None:
            atomic_write_text(out, text)
        return text

    def export_json(self, out: Path | str | None = None, dataset: str | None = None) -> str:
        """The labels as a JSON list of objects; written atomically to ``out`` when given."""
        text = json.dumps(self.export_rows(dataset), indent=1) + "\n"
        if out is not None:
            atomic_write_text(out, text)
        return text

    def import_file(self, path: Path | str, *, author: str | None = None, check_paths: bool = True) -> ImportResult:
        """Import a CSV (``.csv``) or JSON (``.json``; else sniffed) file; see :meth:`import_rows`."""
        return self.import_rows(read_label_file(path), author=author, check_paths=check_paths)


def _files_on_disk(dataset: str, paths: list[str], why: Exception) -> dict[str, Path]:
    """The paths of an import that are regular image files in ``dataset``'s folder, when the dataset cannot be
    indexed (``why``); a built-in key that does not open, or a missing folder, has none."""
    if is_builtin(dataset) or not Path(dataset).is_dir():
        return {}
    folder = Path(dataset).resolve()
    found = {}
    for rel in paths:
        p = folder / rel
        try:
            real = p.resolve()
        except (OSError, RuntimeError):
            continue
        roots = read_roots()
        inside = folder in real.parents or (roots is not None and is_below(real, roots))
        if inside and p.is_file() and is_image_file(p):
            found[rel] = p
    return found


def _mask_from_base64(value: Any) -> bytes | None:
    if value in (None, ""):
        return None
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise LabelError("mask_png_base64 is not base64") from None
    return normalize_mask(raw)


def _import_message(errors: list[tuple[int, str]], n_rows: int, shown: int = 8) -> str:
    errors = sorted(errors)
    numbers = sorted({n for n, _ in errors})
    listed = ", ".join(str(n) for n in numbers[:50]) + (f", ... ({len(numbers)} rows)" if len(numbers) > 50 else "")
    details = "; ".join(f"row {n}: {reason if len(reason) <= 200 else reason[:197] + '...'}" for n, reason in errors[:shown])
    more = f"; and {len(errors) - shown} more" if len(errors) > shown else ""
    word = "row" if len(numbers) == 1 else "rows"
    return f"bad {word} {listed} of {n_rows}, nothing imported: {details}{more}"


def read_label_file(path: Path | str) -> list[dict[str, Any]]:
    """Rows of a label CSV (header with at least ``dataset,path,label``) or JSON file (a list of objects).

    Raises:
        LabelImportError: wrong columns, not CSV/JSON, not UTF-8.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelImportError(f"{path.name}: not a UTF-8 text file (expected CSV or JSON)") from None
    is_json = path.suffix.lower() == ".json" or (path.suffix.lower() != ".csv" and text.lstrip()[:1] in ("[", "{"))
    if is_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabelImportError(f"{path.name}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, list):
            raise LabelImportError(f"{path.name}: expected a JSON list of objects with {', '.join(REQUIRED_COLUMNS)}")
        return data
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        found = ", ".join(header) if header else "no header"
        raise LabelImportError(f"{path.name}: missing column(s) {', '.join(missing)} (found: {found}); "
                               f"a label CSV needs at least {','.join(REQUIRED_COLUMNS)}")
    reader.fieldnames = header
    try:
        return [{k: csv_cell_in(v) if isinstance(v, str) else v for k, v in r.items()} for r in reader]
    except csv.Error as exc:
        raise LabelImportError(f"{path.name}: not a readable CSV ({exc})") from None
