"""Runtime back ends behind one loading function."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import EncodedBatch, ModelBackend

if TYPE_CHECKING:
    from ..bundle import Bundle

BACKENDS = ("torch",)


def load_backend(bundle: Bundle, name: str = "torch", device: str | None = None) -> ModelBackend:
    """Build the named back end for a loaded bundle."""
    if name == "torch":
        import torch

        from ..model_io import load_torch_models
        from .torch_backend import TorchBackend

        encoder, denoiser = load_torch_models(bundle)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return TorchBackend(encoder, denoiser, device)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "EncodedBatch", "ModelBackend", "load_backend"]
