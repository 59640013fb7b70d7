"""Device and numeric precision: CUDA with mixed precision when present, else CPU."""

from __future__ import annotations

import contextlib

import torch

from core.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def local_gpus() -> int:
    """CUDA GPUs on this machine (0 without CUDA): a training can run data-parallel over them."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def available_devices() -> list[str]:
    """Devices this machine has, best first (e.g. ``["cuda", "cpu"]``)."""
    out = []
    if torch.cuda.is_available():
        out.append("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        out.append("mps")
    return [*out, "cpu"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> the best available device; otherwise validate the name.

    Raises:
        ValueError: when the requested device is not present.
    """
    if name in ("auto", "", None):
        return torch.device(available_devices()[0])
    dev = torch.device(name)
    if dev.type not in available_devices():
        raise ConfigError(f"device {name!r} is not available here; available: {', '.join(available_devices())}")
    return dev


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> fp16 on CUDA, bf16 on a CPU with native bf16, else fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """Autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def module_device(model: torch.nn.Module) -> torch.device:
    """Where a module's tensors live: its first parameter, else its first buffer (feature models hold only
    buffers), else the CPU."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")
