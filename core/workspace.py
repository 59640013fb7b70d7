"""Where AnomalyLab keeps what it writes, and atomic file IO.

Everything the project writes (built-in dataset caches, runs, the label database) lives below one
workspace directory: ``./workspace`` by default, or ``$ANOMALYLAB_HOME``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

ENV_HOME = "ANOMALYLAB_HOME"


def workspace_dir() -> Path:
    """Return the workspace directory (created on first use)."""
    root = Path(os.environ.get(ENV_HOME) or "workspace").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def runs_dir() -> Path:
    """Return ``<workspace>/runs`` (created on first use)."""
    path = workspace_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(name: str) -> Path:
    """Return ``<workspace>/cache/<name>`` (created on first use)."""
    path = workspace_dir() / "cache" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------- CSV cells a spreadsheet never evaluates
# OWASP "CSV Injection": a cell that starts with = + - @ tab or carriage return is read as a formula by
# spreadsheets; prefixing a single quote makes it text. Cells that already start with quotes before such a
# character get one more, so that csv_cell_in() gives back exactly what csv_cell_out() was given.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _quoted_formula(text: str) -> bool:
    stripped = text.lstrip("'")
    return stripped[:1] in _FORMULA_START and stripped != ""


def csv_cell_out(value: Any) -> Any:
    """``value`` made safe for a CSV cell: text that a spreadsheet would evaluate gets a leading ``'``;
    numbers (and None) are left as they are."""
    if isinstance(value, str) and _quoted_formula(value):
        return "'" + value
    return value


def csv_cell_in(text: str) -> str:
    """The inverse of :func:`csv_cell_out` for a cell read back from a CSV this project wrote."""
    if isinstance(text, str) and text.startswith("'") and _quoted_formula(text[1:]) and _quoted_formula(text):
        return text[1:]
    return text


LAST_SELECTION_FILE = "last_selection.json"


def last_selection() -> dict[str, Any]:
    """The app's last selection (data, category, run, labels), or {} when none was saved or it is unreadable."""
    try:
        raw = json.loads((workspace_dir() / LAST_SELECTION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def save_last_selection(values: dict[str, Any]) -> None:
    """Keep the app's current selection, so that a new session starts from it."""
    try:
        atomic_write_json(workspace_dir() / LAST_SELECTION_FILE, values)
    except OSError:
        pass  # a read-only workspace only loses this convenience


STALE_TEMP_SECONDS = 3600


@contextlib.contextmanager
def workspace_temp_dir(name: str):
    """A temporary folder below ``<workspace>/cache/tmp-<name>/`` (never outside the workspace), removed on exit;
    folders left by a killed process are removed by the next call once they are an hour old."""
    parent = cache_dir(f"tmp-{name}")
    now = time.time()
    for old in parent.iterdir():
        try:
            if now - old.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    path = Path(tempfile.mkdtemp(dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _temp_sibling(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = _temp_sibling(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write UTF-8 text atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths show up in metric dicts; keep JSON writing forgiving for them.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def atomic_torch_save(path: Path | str, obj: Any) -> None:
    """``torch.save`` to a temp file, then rename: a crash never leaves a truncated checkpoint."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


ENV_ALLOWED_ROOTS = "ANOMALYLAB_ALLOWED_ROOTS"


class AccessError(PermissionError):
    """A path outside the folders the server is allowed to read."""


def default_allowed_roots() -> list[Path]:
    """Folders datasets may be read from: the workspace, ``./data`` and ``../shared/data`` when present.

    ``$ANOMALYLAB_ALLOWED_ROOTS`` (os.pathsep-separated) replaces this list when set.
    """
    env = os.environ.get(ENV_ALLOWED_ROOTS, "")
    if env.strip():
        return [Path(p).expanduser().resolve() for p in env.split(os.pathsep) if p.strip()]
    project = Path(__file__).resolve().parents[1]
    roots = [workspace_dir()]
    for base in dict.fromkeys([Path.cwd(), project]):
        roots += [base / "data", base.parent / "shared" / "data"]
    out: list[Path] = []
    for r in roots:
        r = r.resolve()
        if r not in out:
            out.append(r)
    return out


_READ_ROOTS: list[Path] | None = None


def set_read_roots(roots: list[Path] | None) -> None:
    """Confine this process's dataset reads to ``roots`` (the app server does; None = no confinement).
    ``$ANOMALYLAB_ALLOWED_ROOTS``, when set, always applies."""
    global _READ_ROOTS
    _READ_ROOTS = [Path(r).resolve() for r in roots] if roots is not None else None


def read_roots() -> list[Path] | None:
    """The folders dataset files must resolve into when they are links leading out of their dataset:
    ``$ANOMALYLAB_ALLOWED_ROOTS`` when set, else what :func:`set_read_roots` set, else None (the CLI
    follows links wherever they go)."""
    env = os.environ.get(ENV_ALLOWED_ROOTS, "")
    if env.strip():
        return [Path(p).expanduser().resolve() for p in env.split(os.pathsep) if p.strip()]
    return _READ_ROOTS


def is_below(path: Path, roots: list[Path]) -> bool:
    """True when ``path`` (resolved) is one of ``roots`` or lies below one."""
    return any(path == r or r in path.parents for r in roots)


def check_allowed(path: Path | str, roots: list[Path] | None = None) -> Path:
    """Resolve ``path`` (following links) and return it when it lies below an allowed root.

    Raises:
        AccessError: when it does not, with the allowed roots in the message; also for a path that cannot be
            resolved (a NUL byte, a symlink loop, an unreadable link), as a message, never a traceback.
    """
    roots = [Path(r).resolve() for r in (roots if roots is not None else default_allowed_roots())]
    shown = str(path).replace("\0", "\\0")
    try:
        if "\0" in str(path):
            raise ValueError("embedded null byte")
        real = Path(path).expanduser().resolve()
    except RuntimeError:  # Python 3.11 reports a symlink loop this way
        raise AccessError(f"{shown} cannot be used: it is a symlink loop") from None
    except (ValueError, OSError) as exc:
        raise AccessError(f"{shown} cannot be used as a path ({exc})") from None
    if is_below(real, roots):
        return real
    names = ", ".join(str(r) for r in roots) or "(none)"
    raise AccessError(f"{path} is outside the folders this server may read: {names}")
