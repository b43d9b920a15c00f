"""The reference back end: the PyTorch modules, in process."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..models import (
    DenoiserEnsemble,
    InferenceEncoder,
    ReverseProcess,
    SentenceEmbedder,
    SiDyPEncoder,
)
from .base import EncodedBatch

if TYPE_CHECKING:
    from ..bundle import Bundle
    from ..diffusion import ReverseSchedule


class TorchBackend:
    """``encoder`` may be None where the encoder outputs are already known (training rows).
    ``schedule`` is the :class:`~sidyp_prod.diffusion.ReverseSchedule` and ``scale`` the simplex
    scale S of the bundle's config; ``embedder`` the separate embedding model, if any."""

    def __init__(
        self,
        encoder: SiDyPEncoder | None,
        denoiser: DenoiserEnsemble,
        schedule: ReverseSchedule,
        scale: float,
        device: str = "cpu",
        embedder: SentenceEmbedder | None = None,
    ):
        self.device = torch.device(device)
        self.precision = "fp32"
        self.parallel_batches = 1
        self.reference = None
        self.embedder = embedder.to(self.device).eval() if embedder is not None else None
        denoiser = denoiser.to(self.device).eval()
        self.denoiser = denoiser
        self.encoder = (
            InferenceEncoder(encoder.to(self.device), denoiser).eval() if encoder else None
        )
        self.reverse_process = ReverseProcess(
            denoiser, schedule.timesteps, schedule.alpha_bar, scale
        ).eval()

    @classmethod
    def from_bundle(cls, bundle: Bundle, device: str = "cpu") -> TorchBackend:
        from ..config import SiDyPConfig
        from ..diffusion import ReverseSchedule
        from ..torch_bundle import load_torch_models

        config = SiDyPConfig.from_bundle(bundle.manifest["config"])
        encoder, denoiser, embedder = load_torch_models(bundle)
        return cls(encoder, denoiser, ReverseSchedule.from_config(config),
                   config.simplex_scale, device, embedder)

    def close(self) -> None:
        """Nothing to release: the sessions go with the object."""

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @torch.inference_mode()
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> EncodedBatch:
        if self.encoder is None:
            raise RuntimeError("this TorchBackend was built without an encoder")
        outputs = self.encoder(self._tensor(input_ids), self._tensor(attention_mask))
        return EncodedBatch.from_batch_first(*(o.float().cpu().numpy() for o in outputs))

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self.embedder is None:
            raise RuntimeError("this bundle has no separate embedding model")
        embedding = self.embedder(self._tensor(input_ids), self._tensor(attention_mask))
        return embedding.float().cpu().numpy()

    @torch.inference_mode()
    def condition(self, dynamics: np.ndarray) -> np.ndarray:
        """Raw training dynamics (M, B, F) -> the conditioning ``encode`` would give."""
        return self.denoiser.condition(self._tensor(dynamics)).float().cpu().numpy()

    @torch.inference_mode()
    def reverse(
        self, noise: np.ndarray, conditioning: np.ndarray, y_given: np.ndarray
    ) -> np.ndarray:
        logits = self.reverse_process(*(self._tensor(a) for a in (noise, conditioning, y_given)))
        return logits.float().cpu().numpy()
