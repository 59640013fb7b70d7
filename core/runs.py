"""Run folders: creation, listing, atomic checkpoint IO (``weights_only=True``), loading a run."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from core.config import TrainConfig
from core.errors import AnomalyLabError
from core.models import build_model
from core.workspace import atomic_torch_save, atomic_write_json, runs_dir

BEST_CKPT = "model.pt"
LAST_CKPT = "last.pt"
CONFIG_FILE = "config.json"
HISTORY_FILE = "history.json"
METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.csv"
CHECKPOINT_FORMAT = "anomalylab-checkpoint/1"


class RunError(AnomalyLabError):
    """A run folder or checkpoint that cannot be used."""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:40] or "data"


def new_run_dir(cfg: TrainConfig) -> Path:
    """A new, unique folder ``<workspace>/runs/<time>-<model>-<data>-<category>``."""
    data = cfg.data.split(":", 1)[1] if cfg.data.startswith("builtin:") else Path(cfg.data).name
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model}-{_slug(data)}-{_slug(str(cfg.category))}"
    root = runs_dir()
    for k in range(1000):
        path = root / (base if k == 0 else f"{base}-{k}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RunError(f"could not create a run folder under {root}")


def write_config(run_dir: Path, cfg: TrainConfig, resolved: dict[str, Any]) -> None:
    """Write ``config.json``: the config plus what was resolved at start (device, counts, ...)."""
    atomic_write_json(run_dir / CONFIG_FILE, {"config": asdict(cfg), "resolved": resolved})


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; RunError with the file name when missing or broken."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} is missing") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is not readable JSON ({exc})") from None


INTERRUPTED = "interrupted"  # read_history's status for a "running" run whose process is gone
STALE_SECONDS = 30 * 60  # a run written from another machine with no news for this long counts as interrupted


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``; None elsewhere or when there is no such process):
    with the PID it identifies the process even after the PID is reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    if pid <= 0:
        return False
    if Path("/proc").is_dir():
        now = _process_start(pid)
        return now is not None and (start is None or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_history(
    run_dir: Path, status: str, epochs: list[dict[str, float]], best_epoch: int, best_val: float, error: str | None = None
) -> None:
    """Write ``history.json``: status, best epoch and per-epoch losses, and who writes it (host, PID and the
    process's start time, so a reader can tell a running run from one whose process died)."""
    best = best_val if best_val == best_val and best_val != float("inf") else None  # NaN/inf are not JSON
    pid = os.getpid()
    atomic_write_json(
        run_dir / HISTORY_FILE,
        {"status": status, "best_epoch": best_epoch, "best_val_loss": best, "error": error, "updated": time.time(),
         "host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid), "epochs": epochs},
    )


def read_history(run_dir: Path) -> dict[str, Any]:
    """The run's history, or an empty one when not written yet.

    A run that says ``running`` but whose training process is gone (same host: its PID is not alive, or is now
    another process; another host: no news for :data:`STALE_SECONDS`) is reported as ``interrupted``, with
    the reason in ``interrupted``. The checkpoints it left stay usable."""
    try:
        hist = read_json(Path(run_dir) / HISTORY_FILE)
    except RunError:
        return {"status": "unknown", "epochs": []}
    if hist.get("status") == "running":
        pid, host = hist.get("pid"), hist.get("host")
        if isinstance(pid, int) and host == socket.gethostname():
            if not _alive(pid, hist.get("pid_start")):
                hist = dict(hist, status=INTERRUPTED, interrupted=f"its training process (PID {pid}) ended without "
                                                                   "finishing: killed, or its server was stopped")
        elif time.time() - float(hist.get("updated") or 0) > STALE_SECONDS:
            hist = dict(hist, status=INTERRUPTED, interrupted=f"no progress written for over {STALE_SECONDS // 60} min")
    return hist


def checkpoint_payload(cfg: TrainConfig, model: torch.nn.Module, *, epoch: int, val_loss: float) -> dict[str, Any]:
    """What a checkpoint holds: format tag, config, architecture and a CPU state dict."""
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    return {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(cfg),
        "arch": asdict(model.cfg),
        "state_dict": state,
        "epoch": epoch,
        "val_loss": float(val_loss),
    }


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically."""
    atomic_torch_save(path, payload)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no code runs from the file).

    Raises:
        RunError: missing, truncated, foreign or tampered file.
    """
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} is missing")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "unusable"
        raise RunError(f"checkpoint {path.name} is not readable ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path.name} is not an AnomalyLab checkpoint")
    return payload


@dataclass
class LoadedRun:
    """A trained run ready to score images."""

    path: Path
    config: TrainConfig
    model: torch.nn.Module
    epoch: int

    @property
    def id(self) -> str:
        """Folder name of the run."""
        return self.path.name


def load_run(run_dir: Path | str, device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run's best checkpoint into an eval-mode model on ``device``.

    Raises:
        RunError: not a run folder, or an unusable checkpoint.
    """

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run folder")
    payload = load_checkpoint(run_dir / BEST_CKPT)
    try:
        cfg = TrainConfig.from_dict(payload["config"])
        model = build_model(cfg.model, payload["arch"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise RunError(f"checkpoint in {run_dir.name} does not match its model ({str(exc)[:200]})") from None
    model.to(device).eval()
    return LoadedRun(run_dir, cfg, model, int(payload.get("epoch", 0)))


def run_model(run_dir: Path | str) -> str:
    """The model name a run folder's ``config.json`` names (``ae``, ``vae``, ``unet``, ``fnet``).

    Raises:
        RunError: not a run folder, or no readable config.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run folder")
    cfg = read_json(run_dir / CONFIG_FILE).get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), str):
        raise RunError(f"{run_dir / CONFIG_FILE} names no model")
    return cfg["model"]


def list_runs(root: Path | None = None) -> list[Path]:
    """Run folders (those with a config.json), newest first."""
    root = root or runs_dir()
    found = [p for p in root.iterdir() if p.is_dir() and (p / CONFIG_FILE).exists()] if root.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def delete_run(run_dir: Path) -> None:
    """Remove a run folder below the workspace runs folder (refuses anything else)."""
    run_dir = Path(run_dir).resolve()
    if run_dir.parent != runs_dir().resolve():
        raise RunError(f"refusing to delete {run_dir}: not a run of this workspace")
    shutil.rmtree(run_dir)
