"""Ano-Unet: per-image U-Net optimization against a frozen feature extractor, batched.

For a test image x, a U-Net G (``core/models/unet.py``) is optimized alone, with Adam, on

    L = sum |x - G(x)|  +  beta * sum |F(G(x)) - C|          (L_R + beta * L_C)

where F is the frozen f-Net (``core/fnet.py``) and C the mean F of the normal training images. L_R keeps
what the image shows, L_C pushes G(x) towards what F calls normal; the parts of x that make it "not
normal" change, so the anomaly map is |x - G(x)| (channel mean, Gaussian-smoothed) and the image
score comes from that map (``core.scoring``). Epoch = one Adam step on the one image.

What this module adds to the article (20 minutes per image, out of memory after ~20 images):

* **Batched**: K images are optimized at once, each with its own U-Net. The K parameter sets are
  stacked and run as grouped convolutions (:func:`core.models.unet.unet_apply`), Adam is applied per
  row (an element-wise update with a step count per image, so the images stay independent), and F
  runs once on the K outputs. Slots are refilled as soon as an image finishes, so K images are in
  flight. Memory is bounded by K times the per-image cost (:meth:`AnoUnet.memory_per_image`).
* **Independent of K**: each image's G starts from weights seeded by the image's content (or the warm
  start), and one image alone runs the same code path (K = 1), so results do not depend on K or on the
  position in the request beyond floating-point rounding. Caveat, measured: the optimization is
  chaotic (L1 terms, max pooling in F, Adam's normalized steps), so rounding differences between the
  grouped and the plain convolution kernels grow after ~10 epochs: at 128 px and 100 epochs single
  maps differ by up to ~15 % of their maximum, while the metrics over a set agree within their noise.
* **Residual G** (default): G(x) = sigmoid(logit(x) + U-Net(x)) with a zero-initialized head starts
  as the identity, so L_R measures only the change G makes and its L1 keeps the change sparse: F's
  pull concentrates it on what F objects to. The article's plain G (``residual=False``) must first
  learn to reproduce x and leaves its reconstruction error all over the map.
* **Warm start**: a plain G can start from a U-Net trained once to reproduce the normal images
  (``warm_start="auto"`` trains it into the f-Net's run folder once; or pass a ``unet`` run).
* **Early stop** when the loss plateaus (best loss improved by less than ``plateau_tol`` over
  ``window`` epochs, after ``min_epochs``).
* **Adversarial guard**: the article notes that too many epochs fool F with invisible noise. Every
  ``window`` epochs (after ``min_epochs``) the change of G(x) since the last checkpoint is compared
  with the change of the feature distance: if the distance dropped by more than ``feature_drop``
  (relative) while no pixel moved by more than ``noise_level``, F is being talked into "normal"
  rather than the image repaired; the image stops and keeps the output from before that window
  (``stop_reason="adversarial"``).
* **Result cache**: keyed by the image's uint8 content, the settings, and fingerprints of F's and the
  warm start's weights; stored as ``.npz`` under ``<workspace>/cache/anounet`` (atomic writes).

Measured on MVTec bottle (128 px, 2 CPU cores; commands and numbers in the change's report):
defaults give ~1 s per image; pixel AUROC 0.85 vs 0.89 for the bottle AE on all 83 test images."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import AnoUnetConfig, UNetConfig
from core.detectors.maps import gaussian_blur, image_scores
from core.device import autocast, resolve_device, resolve_precision
from core.errors import ConfigError
from core.models.contract import AnomalyOutput
from core.models.fnet import FNet
from core.models.unet import init_params, unet_apply
from core.workspace import atomic_write_bytes, cache_dir

CACHE_VERSION = "anounet/1"


STOP_REASONS = ("max_epochs", "plateau", "adversarial", "stopped")


_ADAM_BETAS = (0.9, 0.999)


_ADAM_EPS = 1e-8


@dataclass
class ImageResult:
    """The outcome for one image. Arrays are float32 numpy.

    Attributes:
        key: cache key of this image + settings.
        reconstruction: G(x), ``[C, H, W]`` in [0, 1].
        anomaly_map: smoothed |x - G(x)| (channel mean), ``[H, W]``.
        score: image score from the map.
        feature_distance_before: sum |F(x) - C| (the f-Net's own image score).
        feature_distance_after: sum |F(G(x)) - C| for the returned G(x).
        loss_r: L_R per measured epoch (index 0 = before the first step).
        loss_c: L_C (unweighted) per measured epoch.
        pixel_change: mean |G(x) - x| per measured epoch.
        epochs: Adam steps taken for the returned G(x) (after an adversarial rollback: the earlier
            checkpoint's, while the histories go on to where the guard stopped).
        stop_reason: one of :data:`STOP_REASONS`.
        seconds: wall time the image spent in a slot (shared with the other K - 1 images).
        cached: True when read from the result cache.
    """

    key: str
    reconstruction: np.ndarray
    anomaly_map: np.ndarray
    score: float
    feature_distance_before: float
    feature_distance_after: float
    loss_r: np.ndarray
    loss_c: np.ndarray
    pixel_change: np.ndarray
    epochs: int
    stop_reason: str
    seconds: float
    cached: bool = False


@dataclass
class SlotView:
    """One image being optimized, as the progress callback sees it."""

    index: int  # position in the request
    epoch: int
    loss_r: float
    loss_c: float
    pixel_change: float
    preview: np.ndarray | None  # G(x) float32 [C, H, W], every ``preview_every`` epochs


@dataclass
class AnoUnetProgress:
    """What the progress callback receives: after every epoch of the batch, and at start/end."""

    phase: str  # "start", "epoch", "done"
    done: int  # images finished (cache hits included)
    total: int
    cached: int
    seconds: float
    slots: list[SlotView] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)  # request positions finished at this event
    results: list[ImageResult] = field(default_factory=list)  # their results


ProgressFn = Callable[[AnoUnetProgress], None]


def tensor_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha1 over a state dict's names, shapes and bytes (identifies weights regardless of file or time)."""
    h = hashlib.sha1()
    for k in sorted(state):
        t = state[k].detach().to("cpu").contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def image_digest(image: torch.Tensor) -> str:
    """sha1 of a uint8 ``[C, H, W]`` image's shape and bytes."""
    t = image.detach().to("cpu", torch.uint8).contiguous()
    return hashlib.sha1(f"{tuple(t.shape)}|".encode() + t.numpy().tobytes()).hexdigest()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8 (the form results are keyed and computed on)."""
    if x.dtype == torch.uint8:
        return x
    return x.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8)


class _Slots:
    """The images in flight: stacked U-Net parameters, Adam state and per-image bookkeeping."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.params: dict[str, torch.Tensor] = {}
        self.exp_avg: dict[str, torch.Tensor] = {}
        self.exp_avg_sq: dict[str, torch.Tensor] = {}
        self.steps = torch.zeros(0)
        self.x = torch.zeros(0)
        self.info: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.info)

    def add(self, rows: list[dict[str, torch.Tensor]], xs: list[torch.Tensor], infos: list[dict[str, Any]]) -> None:
        new = {n: torch.stack([r[n] for r in rows]) for n in self.names}
        x_new = torch.stack(xs)
        if len(self):
            self.params = {n: torch.cat([self.params[n].detach(), new[n]]).requires_grad_(True) for n in self.names}
            self.exp_avg = {n: torch.cat([self.exp_avg[n], torch.zeros_like(new[n])]) for n in self.names}
            self.exp_avg_sq = {n: torch.cat([self.exp_avg_sq[n], torch.zeros_like(new[n])]) for n in self.names}
            self.steps = torch.cat([self.steps, torch.zeros(len(rows), dtype=torch.float64, device=self.steps.device)])
            self.x = torch.cat([self.x, x_new])
        else:
            self.params = {n: new[n].clone().requires_grad_(True) for n in self.names}
            self.exp_avg = {n: torch.zeros_like(new[n]) for n in self.names}
            self.exp_avg_sq = {n: torch.zeros_like(new[n]) for n in self.names}
            self.steps = torch.zeros(len(rows), dtype=torch.float64, device=x_new.device)
            self.x = x_new
        self.info += infos

    def keep(self, rows: list[int]) -> None:
        idx = torch.tensor(rows, dtype=torch.long, device=self.x.device)
        self.params = {n: self.params[n].detach().index_select(0, idx).requires_grad_(True) for n in self.names}
        self.exp_avg = {n: v.index_select(0, idx) for n, v in self.exp_avg.items()}
        self.exp_avg_sq = {n: v.index_select(0, idx) for n, v in self.exp_avg_sq.items()}
        self.steps = self.steps.index_select(0, idx)
        self.x = self.x.index_select(0, idx)
        self.info = [self.info[i] for i in rows]

    @torch.no_grad()
    def adam_step(self, grads: list[torch.Tensor], lr: float) -> None:
        """torch.optim.Adam's update (no weight decay), with a step count per row (per image)."""
        b1, b2 = _ADAM_BETAS
        self.steps += 1
        # Bias corrections in float64 and the same operation order as torch.optim.Adam, so that one
        # image here follows the article-style loop (torch.optim.Adam) closely: Adam amplifies rounding.
        step_size = (lr / (1 - b1**self.steps)).float()
        bc2_sqrt = (1 - b2**self.steps).sqrt().float()
        for n, g in zip(self.names, grads):
            p, m, v = self.params[n], self.exp_avg[n], self.exp_avg_sq[n]
            shape = (-1,) + (1,) * (p.dim() - 1)
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bc2_sqrt.view(shape)).add_(_ADAM_EPS)
            p.sub_((m / denom) * step_size.view(shape))


class AnoUnet:
    """Runs Ano-Unet on images; also a :class:`core.models.contract.Detector` (``predict``).

    Args:
        fnet: the frozen f-Net (put in eval mode; no gradient ever reaches its parameters).
        cfg: the settings.
        warm_state: parameters of a trained :class:`core.models.unet.UNet` to start every G from, or None.
        warm_arch: the architecture of ``warm_state`` (required with it).
        device: ``auto``, ``cpu``, ``cuda``, ... or a torch.device.
        cache: True = ``<workspace>/cache/anounet``, False = no cache, or a folder.
    """

    def __init__(
        self, fnet: FNet, cfg: AnoUnetConfig | None = None, *, warm_state: dict[str, torch.Tensor] | None = None,
        warm_arch: UNetConfig | None = None, device: str | torch.device = "auto", cache: bool | Path | str = True,
    ) -> None:
        self.cfg = cfg or AnoUnetConfig()
        self.cfg.validate()
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.precision = resolve_precision(self.cfg.precision, self.device)
        if self.precision == "fp16":
            self.precision = "fp32"
        # A private frozen copy: the caller's module (perhaps shared with other threads) is never touched,
        # and this one may switch to channels_last, about 2x faster for F's convolutions on CPU.
        self.fnet = copy.deepcopy(fnet).to(self.device).eval().requires_grad_(False)
        self._channels_last = self.device.type in ("cpu", "cuda")
        if self._channels_last:
            self.fnet = self.fnet.to(memory_format=torch.channels_last)
        self.center = fnet.center.detach().float().to(self.device)
        channels = fnet.cfg.in_channels
        if warm_state is not None:
            if warm_arch is None:
                raise ConfigError("warm_state needs warm_arch")
            if warm_arch.in_channels != channels:
                raise ConfigError(f"the warm-start U-Net has {warm_arch.in_channels} channels, the f-Net {channels}")
            self.unet_cfg = warm_arch
            self.warm = {k: v.detach().float().to(self.device) for k, v in warm_state.items()}
        else:
            self.unet_cfg = UNetConfig(channels, self.cfg.base_channels, self.cfg.levels, self.cfg.norm_groups,
                                       self.cfg.residual, self.cfg.skip)
            self.warm = None
        self.names = list(init_params(self.unet_cfg, 0))
        if self.warm is not None and sorted(self.warm) != sorted(self.names):
            raise ConfigError("the warm-start state does not match the U-Net architecture")
        self._fnet_id = tensor_fingerprint({**fnet.state_dict()})
        self._warm_id = tensor_fingerprint(self.warm) if self.warm is not None else "none"
        self._cache = cache

    # ------------------------------------------------------------------ cache
    def cache_folder(self) -> Path | None:
        """Where results are cached, or None when caching is off."""
        if self._cache is False or self._cache is None:
            return None
        if self._cache is True:

            return cache_dir("anounet")
        path = Path(self._cache)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cache_key(self, image: torch.Tensor) -> str:
        """Key of one uint8 ``[C, H, W]`` image's result under these settings, F and warm start."""
        blob = json.dumps({"v": CACHE_VERSION, "image": image_digest(image), "settings": self.cfg.result_settings(),
                           "unet": asdict(self.unet_cfg), "fnet": self._fnet_id, "warm": self._warm_id}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        folder = self.cache_folder()
        return None if folder is None else folder / key[:2] / f"{key}.npz"

    def _cache_read(self, key: str) -> ImageResult | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return ImageResult(
                    key, z["reconstruction"], z["anomaly_map"], float(z["score"]), float(z["feature_distance_before"]),
                    float(z["feature_distance_after"]), z["loss_r"], z["loss_c"], z["pixel_change"], int(z["epochs"]),
                    str(z["stop_reason"]), float(z["seconds"]), cached=True,
                )
        except (OSError, ValueError, KeyError):  # a broken cache file is a miss
            return None

    def _cache_write(self, r: ImageResult) -> None:
        path = self._cache_path(r.key)
        if path is None:
            return

        buf = io.BytesIO()
        np.savez(buf, reconstruction=r.reconstruction, anomaly_map=r.anomaly_map, score=r.score,
                 feature_distance_before=r.feature_distance_before, feature_distance_after=r.feature_distance_after,
                 loss_r=r.loss_r, loss_c=r.loss_c, pixel_change=r.pixel_change, epochs=r.epochs,
                 stop_reason=r.stop_reason, seconds=r.seconds)
        atomic_write_bytes(path, buf.getvalue())

    # ------------------------------------------------------------------ core loop
    def _initial_params(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.warm is not None:
            return self.warm
        # Seeded by the image's content: the same image gets the same G wherever it sits in a request.
        seed = (int(image_digest(image)[:12], 16) ^ (self.cfg.seed * 0x9E3779B1)) % (2**63 - 1)
        return {k: v.to(self.device) for k, v in init_params(self.unet_cfg, seed).items()}

    def _embed(self, y: torch.Tensor) -> torch.Tensor:
        """F(y) (in channels_last where that is faster)."""
        return self.fnet(y.contiguous(memory_format=torch.channels_last) if self._channels_last else y)

    def _forward(self, slots: _Slots) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """G(x), per-image L_R, L_C (unweighted) and the total loss, with the graph to G's parameters."""
        with autocast(self.device, self.precision):
            y = unet_apply(self.unet_cfg, slots.params, slots.x, copies=len(slots))
            emb = self._embed(y)
        y = y.float()
        loss_r = (slots.x - y).abs().flatten(1).sum(1)
        loss_c = (emb.float() - self.center).abs().sum(1)
        return y, loss_r, loss_c, loss_r + self.cfg.beta * loss_c

    def _decide(self, info: dict[str, Any], y: torch.Tensor, d: float) -> tuple[str | None, torch.Tensor | None]:
        """Stop reason for one image at its current epoch (or None), and a rolled-back output for the guard."""
        cfg, t = self.cfg, info["epoch"]
        if cfg.guard and t % cfg.window == 0:
            snap, d_snap = info["snapshot"], info["snapshot_d"]
            if snap is not None and t >= cfg.min_epochs:  # the first epochs move little by design (identity start)
                moved = float((y - snap).abs().mean(0).amax())
                dropped = (d_snap - d) / max(d_snap, 1e-12)
                if dropped > cfg.feature_drop and moved < cfg.noise_level:
                    return "adversarial", snap
            info["snapshot"], info["snapshot_d"], info["snapshot_epoch"] = y.detach().clone(), d, t
        if t >= cfg.epochs:
            return "max_epochs", None
        if cfg.early_stop and t >= max(cfg.min_epochs, cfg.window):
            best = info["best"]
            if best[t - cfg.window] - best[t] < cfg.plateau_tol * best[t - cfg.window]:
                return "plateau", None
        return None, None

    def _finish(self, info: dict[str, Any], y: torch.Tensor, reason: str, rolled_back: bool) -> ImageResult:
        x = info["x"]
        with torch.no_grad():
            diff = (x - y).abs()
            amap = gaussian_blur(diff.mean(0, keepdim=True), self.cfg.smooth_sigma)
            score = image_scores(amap, self.cfg.score_config(), diff.sum().view(1) * 255.0)
        epochs = info["snapshot_epoch"] if rolled_back else info["epoch"]
        d_after = info["snapshot_d"] if rolled_back else info["loss_c"][-1]
        # Histories are kept whole (also the window a rollback discarded): the page shows what happened.
        return ImageResult(
            info["key"], y.float().cpu().numpy(), amap[0].float().cpu().numpy(), float(score[0]), info["d_before"],
            float(d_after), np.asarray(info["loss_r"], np.float32), np.asarray(info["loss_c"], np.float32),
            np.asarray(info["pixel_change"], np.float32), int(epochs), reason, time.monotonic() - info["started"],
        )

    @torch.enable_grad()  # optimizes G: works inside a caller's no_grad (e.g. core.evaluate.score_split)
    def run(
        self, images: torch.Tensor, *, progress: ProgressFn | None = None, stop: threading.Event | None = None,
        preview_every: int = 1,
    ) -> list[ImageResult | None]:
        """Optimize one U-Net per image, K at a time; cached images are not recomputed.

        Args:
            images: uint8 ``[N, C, H, W]`` (float in [0, 1] is rounded to uint8 first); C must match F.
            progress: called at start, after every epoch of the batch (loss terms of every image in
                flight, G(x) previews every ``preview_every`` epochs) and at the end.
            stop: when set, the images in flight finish at once (``stop_reason="stopped"``, not
                cached) and the images not started yet are returned as None.
            preview_every: epochs between previews (0 = none).

        Returns:
            One result per image, in order (None only for images never started because of ``stop``).
        """
        images = to_uint8(images).cpu()
        if images.dim() != 4 or images.shape[1] != self.fnet.cfg.in_channels:
            raise ConfigError(f"images must be [N, {self.fnet.cfg.in_channels}, H, W], got {tuple(images.shape)}")
        self.unet_cfg.validate(images.shape[-1])
        if images.shape[-2] != images.shape[-1]:
            raise ConfigError("images must be square")
        started = time.monotonic()
        n = len(images)
        results: list[ImageResult | None] = [None] * n
        keys = [self.cache_key(img) for img in images]
        for i, k in enumerate(keys):
            results[i] = self._cache_read(k)
        n_cached = sum(r is not None for r in results)
        queue = deque(i for i in range(n) if results[i] is None)
        done = n_cached
        if progress:
            progress(AnoUnetProgress("start", done, n, n_cached, 0.0))
        slots = _Slots(self.names)
        while queue or len(slots):
            stopping = stop is not None and stop.is_set()
            if not stopping and queue and len(slots) < self.cfg.batch:
                take = [queue.popleft() for _ in range(min(self.cfg.batch - len(slots), len(queue)))]
                xs = [images[i].to(self.device).float().div_(255.0) for i in take]
                with torch.no_grad(), autocast(self.device, self.precision):
                    d0 = (self._embed(torch.stack(xs)).float() - self.center).abs().sum(1).tolist()
                infos = [{"index": i, "key": keys[i], "x": x, "epoch": 0, "loss_r": [], "loss_c": [], "pixel_change": [],
                          "best": [], "snapshot": None, "snapshot_d": math.inf, "snapshot_epoch": 0, "d_before": d,
                          "started": time.monotonic()} for i, x, d in zip(take, xs, d0)]
                slots.add([self._initial_params(images[i]) for i in take], xs, infos)
            if not len(slots):
                break
            with torch.enable_grad():
                y, loss_r, loss_c, total = self._forward(slots)
            lr_l, lc_l, tot_l = loss_r.tolist(), loss_c.tolist(), total.tolist()
            pix = (slots.x - y.detach()).abs().flatten(1).mean(1).tolist()
            finished, keep = [], []
            for row, info in enumerate(slots.info):
                info["loss_r"].append(lr_l[row])
                info["loss_c"].append(lc_l[row])
                info["pixel_change"].append(pix[row])
                info["best"].append(min(tot_l[row], info["best"][-1]) if info["best"] else tot_l[row])
                if not math.isfinite(tot_l[row]):
                    raise FloatingPointError(f"Ano-Unet diverged on image {info['index']}; try a lower lr or beta")
                reason, rollback = ("stopped", None) if stopping else self._decide(info, y[row].detach(), lc_l[row])
                if reason is None:
                    keep.append(row)
                    continue
                res = self._finish(info, rollback if rollback is not None else y[row].detach(), reason, rollback is not None)
                results[info["index"]] = res
                finished.append(info["index"])
                if reason != "stopped":
                    self._cache_write(res)
            views: list[SlotView] = []
            if progress:
                for row in keep:
                    info = slots.info[row]
                    t = info["epoch"]  # the epoch just measured (before this step's update)
                    prev = y[row].detach().float().cpu().numpy() if preview_every and t % preview_every == 0 else None
                    views.append(SlotView(info["index"], t, info["loss_r"][-1], info["loss_c"][-1], info["pixel_change"][-1], prev))
            if keep:
                grads = torch.autograd.grad(total.sum(), [slots.params[nm] for nm in self.names])
                slots.adam_step([g.detach() for g in grads], self.cfg.lr)
                for row in keep:
                    slots.info[row]["epoch"] += 1
            del y, loss_r, loss_c, total
            if len(keep) != len(slots):
                slots.keep(keep)
            done += len(finished)
            if progress:
                progress(AnoUnetProgress("epoch", done, n, n_cached, time.monotonic() - started, views, finished,
                                         [results[i] for i in finished]))
        if progress:
            progress(AnoUnetProgress("done", done, n, n_cached, time.monotonic() - started))
        return results

    # ------------------------------------------------------------------ detector contract
    def predict(self, x: torch.Tensor) -> AnomalyOutput:
        """The common detector contract: score, smoothed |x - G(x)| map, G(x) (inputs rounded to uint8)."""
        res = self.run(x)
        assert all(r is not None for r in res)
        return AnomalyOutput(
            torch.tensor([r.score for r in res]),
            torch.from_numpy(np.stack([r.anomaly_map for r in res])),
            torch.from_numpy(np.stack([r.reconstruction for r in res])),
        )

    # ------------------------------------------------------------------ memory
    def memory_per_image(self, size: int) -> dict[str, float]:
        """Estimated bytes one image in flight needs at ``size`` px (memory grows linearly with K).

        Method: the U-Net's parameters, gradients and two Adam moments (4 x 4 bytes per parameter),
        plus every tensor autograd saves for the backward pass of one image (G and F activations,
        counted by storage through ``torch.autograd.graph.saved_tensors_hooks``, F's own weights
        excluded: they are shared), plus the image, G(x) and the guard's snapshot. F's weights are a
        fixed cost for the whole batch (``fnet_bytes``).
        """
        n_params = sum(v.numel() for v in init_params(self.unet_cfg, 0).values())
        shared = {p.untyped_storage().data_ptr() for p in self.fnet.parameters()}
        shared |= {b.untyped_storage().data_ptr() for b in self.fnet.buffers()}
        slots = _Slots(self.names)
        x = torch.rand(self.unet_cfg.in_channels, size, size, device=self.device)
        slots.add([self._initial_params(to_uint8(x))], [x], [{}])
        shared |= {p.untyped_storage().data_ptr() for p in slots.params.values()}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            if s.data_ptr() not in shared:
                seen[s.data_ptr()] = s.nbytes()
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _, _, _, total = self._forward(slots)
        del total
        activations = float(sum(seen.values()))
        image_bytes = 3 * 4 * x.numel()
        param_bytes = 16 * n_params
        fnet_bytes = float(sum(p.numel() * p.element_size() for p in self.fnet.parameters()))
        return {
            "unet_parameters": float(n_params),
            "param_state_bytes": float(param_bytes),
            "activation_bytes": activations,
            "image_bytes": float(image_bytes),
            "bytes_per_image": param_bytes + activations + image_bytes,
            "fnet_bytes": fnet_bytes,
        }
