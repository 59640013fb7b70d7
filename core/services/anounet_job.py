"""The Ano-Unet page's work without Streamlit: the request (its job runs :func:`core.services.tasks.anounet_task`),
test-image names, and the numbers of a finished job (pixel AUROC against a comparison run, colour scales)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np

from core.config import AnoUnetConfig
from core.data.loading import LoadedSplit
from core.evaluation import metrics
from core.services.image_request import ImageRequest

JOB_KIND = "anounet"
MAP_QUANTILE = 0.995  # each method's maps share one colour scale, up to this quantile


@dataclass(frozen=True)
class AnoUnetRequest(ImageRequest):
    """Which images, with which f-Net (``model_id``) and settings; ``batch`` is not part of the identity."""

    KIND: ClassVar[str] = JOB_KIND
    OWNER: ClassVar[str] = "fnet_id"

    cfg: AnoUnetConfig
    warm_start: str

    def settings(self) -> tuple[dict[str, Any], str]:
        return self.cfg.result_settings(), self.warm_start

    @property
    def title(self) -> str:
        return f"Ano-Unet · {len(self.keys)} image(s) · β {self.cfg.beta:g} · up to {self.cfg.epochs} epochs"

    def job_state(self) -> dict[str, Any]:
        return {**super().job_state(), "config": asdict(self.cfg), "warm_start": self.warm_start}


def split_names(split: LoadedSplit) -> list[str]:
    """``defect/file`` names of a split's samples (unique within an MVTec-style test folder)."""
    return [f"{s.defect}/{s.path.name}" for s in split.samples]


def maps_vmax(maps: np.ndarray, q: float = MAP_QUANTILE) -> float:
    """The top of a common colour scale: the ``q`` quantile of the maps (never 0)."""
    return max(float(np.quantile(maps, q)), 1e-6)


@dataclass(frozen=True)
class Summary:
    """What a finished (or stopped) Ano-Unet job amounts to, for the result header."""

    done: list[int]  # request positions with a result
    cached: int  # of those, read from the result cache
    stopped: int  # of those, stopped by the user
    with_masks: int  # of those, with a ground-truth mask (the pixel AUROCs are over these; 0 when no mask has a defect pixel)
    auroc_ano: float | None  # pixel AUROC of the Ano-Unet maps (None: no mask with defect pixels)
    compared: bool  # comparison maps were given
    auroc_other: float | None  # the same for the comparison maps
    computed: int  # results the job optimized (not cached)
    seconds_per_image: float | None


def summarize(results: list, masks: list[np.ndarray | None], other_maps: np.ndarray | None, seconds: float) -> Summary:
    """Counts, pixel AUROCs over the images with masks (Ano-Unet and ``other_maps``) and the speed."""
    done = [i for i, r in enumerate(results) if r is not None]
    known = [i for i in done if masks[i] is not None]
    auroc_ano = auroc_other = None
    if known and any(masks[i].any() for i in known):
        gt = np.stack([masks[i] for i in known]).astype(bool)
        auroc_ano = metrics.pixel_auroc(np.stack([results[i].anomaly_map for i in known]), gt)
        if other_maps is not None:
            auroc_other = metrics.pixel_auroc(other_maps[known], gt)
    else:
        known = []
    computed = sum(1 for i in done if not results[i].cached)
    return Summary(done, sum(1 for i in done if results[i].cached), sum(1 for i in done if results[i].stop_reason == "stopped"),
                   len(known), auroc_ano, other_maps is not None, auroc_other, computed, seconds / computed if computed else None)
