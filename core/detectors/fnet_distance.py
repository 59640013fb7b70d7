"""The f-Net distance detector: image score = L1 distance of F(x) to the mean normal feature C; no map."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from core.models.contract import AnomalyOutput

if TYPE_CHECKING:
    from core.runs import LoadedRun
from core.models.fnet import FNet
from core.runs import RunError, load_run


class FNetDetector:
    """The common detector contract over F alone: score = distance to C.

    F does not localize: there is no anomaly map (None, not a fake constant one) and no reconstruction.
    Ano-Unet (:mod:`core.detectors.anounet`) gives maps from the same F.
    """

    def __init__(self, model: FNet) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        return AnomalyOutput(self.model.distance(x.float()), None, None)


# --------------------------------------------------------------------------- #
# Loading and evaluating a run
# --------------------------------------------------------------------------- #
def is_fnet_run(run_dir: Path | str) -> bool:
    """True when ``run_dir/config.json`` says ``model: fnet`` (False for anything unreadable)."""
    import json

    try:
        return json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))["config"]["model"] == "fnet"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load_fnet(run_dir: Path | str, device: str | torch.device = "cpu") -> LoadedRun:
    """Load an f-Net run, frozen: eval mode, no parameter requires grad.

    Raises:
        core.runs.RunError: not a run, or not an f-Net run.
    """

    run = load_run(run_dir, device)
    if run.config.model != "fnet" or not isinstance(run.model, FNet):
        raise RunError(f"{Path(run_dir).name} is a {run.config.model} run, not an f-Net run (train one with --model fnet)")
    run.model.eval().requires_grad_(False)
    return run
