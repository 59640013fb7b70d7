"""The detector registry: which detectors a run supports, their settings, and building them.

Every detector is built from a loaded run and a dict of settings and returns the one output contract,
:class:`core.models.contract.AnomalyOutput` (``anomaly_map`` is None for image-level detectors such as
the f-Net distance). The evaluation path (:mod:`core.evaluation.scored`), the CLI (``python -m core
detectors`` / ``evaluate --detector NAME --set KEY=VALUE``) and the pages all go through :func:`build`,
so a detector added here is scored, cached, measured and shown everywhere.

To add a detector: write its module in ``core/detectors/`` (a class with ``predict(x) -> AnomalyOutput``),
then register a :class:`DetectorSpec` with its settings and a builder in :data:`REGISTRY` below.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from core.config import (
    MAP_MODES,
    RECONSTRUCTION_MODELS,
    SCORE_MODES,
    AnoUnetConfig,
    ProjectionConfig,
    ScoreConfig,
)
from core.detectors.anounet import AnoUnet
from core.detectors.fnet_distance import FNetDetector
from core.detectors.padim import PaDiMDetector
from core.detectors.patchcore import SCORE_MARGIN, PatchCoreDetector
from core.detectors.projection import ProjectionDetector
from core.detectors.reconstruction import (
    RESIDUALS,
    ReconstructionDetector,
    run_normal_error,
)
from core.device import module_device
from core.errors import DetectorError
from core.models.contract import Detector
from core.runs import LoadedRun

# The reconstruction detector's "normalize" setting. Measured (README's detector table): the AE's image AUROC
# on the shared bottle 0.886 -> 0.985, on the shared grid 0.667 -> 0.727; so it is on by default.
NORMALIZE_DEFAULT = True
ALIASES = {"fnet": "fnet-distance", "auto": ""}  # "fnet" is the name earlier versions used
# Runs whose model reconstructs its input: the AE and VAE, and the U-Net trained for the Ano-Unet warm start.
RECONSTRUCTING = (*RECONSTRUCTION_MODELS, "unet")


@dataclass(frozen=True)
class Setting:
    """One setting of a detector.

    Attributes:
        name: the key (``--set name=value`` on the CLI, the field of the detector's config).
        default: the value used when none is given; None means "the run's own value".
        help: one line for people.
        kind: ``int``, ``float``, ``bool`` or ``str``.
        choices: the allowed values of a ``str`` setting, if limited.
        minimum: the smallest allowed value of a number, if limited.
    """

    name: str
    default: Any
    help: str
    kind: str = "float"
    choices: tuple[str, ...] | None = None
    minimum: float | None = None

    def parse(self, value: Any) -> Any:
        """``value`` (a string from the CLI or a typed value) as this setting's type.

        Raises:
            DetectorError: a value of the wrong type, out of range or not among the choices.
        """
        try:
            if self.kind == "bool":
                if isinstance(value, str):
                    key = value.strip().lower()
                    if key not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError
                    out: Any = key in ("1", "true", "yes", "on")
                else:
                    out = bool(value)
            elif self.kind == "int":
                out = int(value) if not isinstance(value, float) or float(value).is_integer() else None
                if out is None:
                    raise ValueError
            elif self.kind == "float":
                out = float(value)
                if out != out or out in (float("inf"), float("-inf")):
                    raise ValueError
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise DetectorError(f"setting {self.name} must be a {self.kind}, got {value!r}") from None
        if self.choices is not None and out not in self.choices:
            raise DetectorError(f"setting {self.name} must be one of {', '.join(self.choices)}, got {out!r}")
        if self.minimum is not None and out < self.minimum:
            raise DetectorError(f"setting {self.name} must be >= {self.minimum:g}, got {out!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (``detectors --json``)."""
        return {"name": self.name, "default": self.default, "help": self.help, "type": self.kind,
                "choices": list(self.choices) if self.choices else None, "minimum": self.minimum}


@dataclass(frozen=True)
class DetectorSpec:
    """A registered detector.

    Attributes:
        name: the detector's name (``--detector NAME``).
        title: a short human name for pages.
        help: what it does, in one or two sentences.
        models: the run models it works on (``ae``, ``vae``, ``fnet``).
        settings: its settings, in display order.
        has_map: whether it localizes (returns an anomaly map).
        batch_size: the scoring batch that suits it.
        builder: ``builder(run, settings, device) -> Detector``.
    """

    name: str
    title: str
    help: str
    models: tuple[str, ...]
    settings: tuple[Setting, ...]
    has_map: bool
    batch_size: int
    builder: Callable[[LoadedRun, dict[str, Any], torch.device], Detector]

    def setting(self, name: str) -> Setting:
        """The setting called ``name``; DetectorError when there is none."""
        for s in self.settings:
            if s.name == name:
                return s
        raise DetectorError(f"detector {self.name} has no setting {name!r}; its settings: "
                            + (", ".join(s.name for s in self.settings) or "none"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (``detectors --json``)."""
        return {"name": self.name, "title": self.title, "help": self.help, "models": list(self.models),
                "has_map": self.has_map, "settings": [s.to_dict() for s in self.settings]}


# ------------------------------------------------------------------------------------------- settings
_SCORE_SETTINGS = (
    Setting("score_mode", None, "how the map becomes the image score (default: the run's)", "str", SCORE_MODES),
    Setting("topk_percent", None, "topk score: share of the highest map pixels averaged, in % (default: the run's)",
            "float", None, 0.0),
    Setting("smooth_sigma", None, "Gaussian smoothing of the map before scoring, in pixels (default: the run's)",
            "float", None, 0.0),
)


def _score_config(run: LoadedRun, settings: Mapping[str, Any]) -> ScoreConfig:
    base = run.config.score_config()
    given = {k: settings[k] for k in ("score_mode", "topk_percent", "smooth_sigma") if settings.get(k) is not None}
    cfg = ScoreConfig(given.get("score_mode", base.mode), given.get("topk_percent", base.topk_percent),
                      given.get("smooth_sigma", base.smooth_sigma))
    try:
        cfg.validate()
    except ValueError as exc:
        raise DetectorError(str(exc)) from None
    return cfg


_PROJECTION_HELP = {
    "steps": "projection steps T", "alpha": "step size alpha", "lam": "weight lambda of ||x - x0||_1",
    "map_mode": "projection: |x_T - x0|; combined: adds the reconstruction error of x_T",
    "divergence_factor": "an image whose energy grows past this factor x its start is frozen",
    "precision": "the model's forward/backward: auto, fp32, bf16, fp16",
}
_ANOUNET_HELP = {
    "beta": "weight of the feature term L_C", "epochs": "at most this many Adam steps per image",
    "lr": "Adam learning rate", "batch": "K: images optimized at once (speed only)",
    "early_stop": "stop an image when its loss plateaus", "guard": "stop (and roll back) when F is fooled",
}


def _settings_of(config_cls: type, helps: Mapping[str, str], choices: Mapping[str, tuple[str, ...]],
                 skip: tuple[str, ...] = ()) -> tuple[Setting, ...]:
    """Settings from a frozen config dataclass: its fields, defaults and types."""
    out = []
    defaults = config_cls()
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        value = getattr(defaults, f.name)
        kind = "bool" if isinstance(value, bool) else "int" if isinstance(value, int) else (
            "float" if isinstance(value, float) else "str")
        out.append(Setting(f.name, value, helps.get(f.name, f.name.replace("_", " ")), kind, choices.get(f.name)))
    return tuple(out)


def _config_from(config_cls: type, settings: Mapping[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(config_cls)}
    cfg = config_cls(**{k: v for k, v in settings.items() if k in names and v is not None})
    try:
        cfg.validate()
    except ValueError as exc:
        raise DetectorError(str(exc)) from None
    return cfg


# ------------------------------------------------------------------------------------------- builders
def _build_reconstruction(run: LoadedRun, settings: dict[str, Any], device: torch.device) -> Detector:
    score = _score_config(run, settings)
    residual = settings.get("residual") or "auto"
    normal = run_normal_error(run, score, residual) if settings.get("normalize") else None
    return ReconstructionDetector(run.model, score, normal, residual)


def _build_projection(run: LoadedRun, settings: dict[str, Any], device: torch.device) -> Detector:
    return ProjectionDetector(run.model, _config_from(ProjectionConfig, settings), _score_config(run, settings))


def _build_fnet_distance(run: LoadedRun, settings: dict[str, Any], device: torch.device) -> Detector:
    return FNetDetector(run.model)


def _build_anounet(run: LoadedRun, settings: dict[str, Any], device: torch.device) -> Detector:
    cache = bool(settings.get("cache", True))
    cfg = _config_from(AnoUnetConfig, {k: v for k, v in settings.items() if k != "cache"})
    return AnoUnet(run.model, cfg, device=device, cache=cache)


def _build_patchcore(run: LoadedRun, settings: dict[str, Any], device: torch.device) -> Detector:
    return PatchCoreDetector(run.model, smooth_sigma=settings["smooth_sigma"], reweight=settings["reweight"],
                             neighbours=settings["neighbours"], score_margin=settings["score_margin"])


def _build_padim(run: LoadedRun, settings: dict[str, Any], device: torch.device) -> Detector:
    return PaDiMDetector(run.model, smooth_sigma=settings["smooth_sigma"], score_margin=settings["score_margin"])


_FEATURE_SMOOTH = Setting("smooth_sigma", 4.0, "Gaussian smoothing of the upsampled map, in pixels at 224 px "
                          "(scaled with the image; the papers' 4)", "float", None, 0.0)
_FEATURE_MARGIN = Setting("score_margin", SCORE_MARGIN, "share of each side left out of the image score: border "
                          "patches see the backbone's zero padding (0.0625 = the papers' 256 -> 224 centre crop)",
                          "float", None, 0.0)


REGISTRY: dict[str, DetectorSpec] = {
    spec.name: spec
    for spec in (
        DetectorSpec(
            "reconstruction", "Reconstruction error",
            "anomaly map = |input - reconstruction| of the run's AE or VAE, smoothed; image score from the map",
            RECONSTRUCTING,
            (Setting("normalize", NORMALIZE_DEFAULT, "standardize the error map per pixel by its mean and std over the "
                     "run's held-out normal images, so that regions every normal image reconstructs poorly do not "
                     "dominate the score", "bool"),
             Setting("residual", "auto", "the per-pixel error: l1 = |x - f(x)|, ssim = (1 - SSIM(x, f(x))) / 2 "
                     "(Bergmann et al. 2019), auto = the one the AE was trained with (its --ae-loss)", "str",
                     RESIDUALS), *_SCORE_SETTINGS),
            True, 32, _build_reconstruction),
        DetectorSpec(
            "projection", "Iterative projection",
            "the test image is moved towards what the model can reconstruct (Dehaene et al., ICLR 2020); "
            "anomaly map = |x_T - x0|",
            RECONSTRUCTING,
            _settings_of(ProjectionConfig, _PROJECTION_HELP, {"map_mode": MAP_MODES,
                                                              "precision": ("auto", "fp32", "bf16", "fp16")})
            + _SCORE_SETTINGS,
            True, 16, _build_projection),
        DetectorSpec(
            "fnet-distance", "f-Net distance to C",
            "image score = L1 distance of the f-Net feature F(x) to the mean normal feature C; no map",
            ("fnet",), (), False, 32, _build_fnet_distance),
        DetectorSpec(
            "anounet", "Ano-Unet map",
            "per test image a U-Net G minimizes sum|x - G(x)| + beta * sum|F(G(x)) - C|; anomaly map = |x - G(x)|",
            ("fnet",),
            _settings_of(AnoUnetConfig, _ANOUNET_HELP, {"precision": ("auto", "fp32", "bf16"),
                                                         "skip": ("concat", "add", "none")}),
            True, 8, _build_anounet),
        DetectorSpec(
            "patchcore", "PatchCore",
            "distance of each patch's ImageNet features to the nearest patch of a coreset of the normal training "
            "patches (Roth et al., CVPR 2022); image score = the largest patch distance inside the border margin",
            ("patchcore",),
            (_FEATURE_SMOOTH, _FEATURE_MARGIN,
             Setting("reweight", False, "reweight the image score by how isolated the nearest bank patch is "
                     "(the paper's eq. 7)", "bool"),
             Setting("neighbours", 9, "bank neighbours of the reweighting (the paper's b)", "int", None, 1)),
            True, 16, _build_patchcore),
        DetectorSpec(
            "padim", "PaDiM",
            "Mahalanobis distance of each patch's ImageNet features to a Gaussian of the normal patches at that "
            "position (Defard et al., ICPR 2021); image score = the largest patch distance inside the border margin",
            ("padim",), (_FEATURE_SMOOTH, _FEATURE_MARGIN), True, 16, _build_padim),
    )
}


# ------------------------------------------------------------------------------------------------ API
def canonical_name(name: str) -> str:
    """The registered name for ``name`` (``fnet`` -> ``fnet-distance``); ``auto`` gives ``""``."""
    return ALIASES.get(name, name)


def get(name: str) -> DetectorSpec:
    """The spec of a detector by name (aliases accepted).

    Raises:
        DetectorError: an unknown name.
    """
    spec = REGISTRY.get(canonical_name(name))
    if spec is None:
        raise DetectorError(f"unknown detector {name!r}; available: {', '.join(REGISTRY)}")
    return spec


def supported(model: str) -> list[DetectorSpec]:
    """The detectors a run of ``model`` supports, the default first."""
    return [s for s in REGISTRY.values() if model in s.models]


def default_name(model: str) -> str:
    """The default detector of a run of ``model``: ``fnet-distance`` for f-Net runs, else ``reconstruction``."""
    found = supported(model)
    if not found:
        raise DetectorError(f"no detector supports {model!r} runs")
    return found[0].name


def resolve(model: str, name: str = "auto") -> DetectorSpec:
    """The spec for ``name`` on a run of ``model`` (``auto`` = the default).

    Raises:
        DetectorError: an unknown name, or one that does not work on this kind of run.
    """
    spec = get(name) if canonical_name(name) else get(default_name(model))
    if model not in spec.models:
        names = ", ".join(s.name for s in supported(model))
        raise DetectorError(f"detector {spec.name} does not work on {model} runs; use {names}")
    return spec


def parse_settings(spec: DetectorSpec, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full settings of ``spec``: the defaults with ``given`` (strings or values) parsed on top.

    Raises:
        DetectorError: an unknown key or a bad value.
    """
    out = {s.name: s.default for s in spec.settings}
    for key, value in (given or {}).items():
        if key == "cache" and spec.name == "anounet":  # not a result setting: whether to reuse per-image results
            out[key] = Setting("cache", True, "", "bool").parse(value)
            continue
        out[key] = None if value is None else spec.setting(key).parse(value)
    return out


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` (the CLI's ``--set``) as a dict.

    Raises:
        DetectorError: an item without ``=``.
    """
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DetectorError(f"--set needs KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def settings_key(settings: Mapping[str, Any]) -> str:
    """A stable text form of result settings (part of the scoring cache key)."""
    return json.dumps({k: v for k, v in sorted(settings.items()) if k not in ("batch", "cache")}, sort_keys=True)


def build(run: LoadedRun, name: str = "auto", settings: Mapping[str, Any] | None = None,
          device: torch.device | str | None = None) -> Detector:
    """Build detector ``name`` over ``run`` with ``settings`` (defaults for what is not given).

    Raises:
        DetectorError: unknown detector or setting, a bad value, or a detector that does not work on this run.
    """
    spec = resolve(run.config.model, name)
    dev = device if isinstance(device, torch.device) else module_device(run.model)
    return spec.builder(run, parse_settings(spec, settings), dev)
