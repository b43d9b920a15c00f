"""Where training computes: ``--device auto|cpu|cuda|cuda:N`` and the mixed precision it gets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


class DeviceError(ValueError):
    """A device that was asked for and is not there (the CLI's exit code 2)."""


def resolve_device(spec: str | None = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU. An explicit CUDA device
    on a machine without it is an error, never a silent fallback."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {spec}: this machine has no CUDA device "
                              "(or this torch build has no CUDA); use --device cpu or auto")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise DeviceError(f"--device {spec!r}: choose {DEVICE_CHOICES}")


@dataclass
class Precision:
    """bf16 autocast on GPUs that support it, fp16 with loss scaling on older ones, fp32 on the
    CPU (whose results stay bit-for-bit deterministic)."""

    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        if self.device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @property
    def name(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype == torch.float32:
            yield
        else:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield

    def scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, enabled only for fp16 (bf16 has fp32's range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
