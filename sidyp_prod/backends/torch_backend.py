"""The reference back end: the PyTorch modules, in process."""

from __future__ import annotations

import numpy as np
import torch

from ..models import DenoiserEnsemble, DenoiserStep, InferenceEncoder, SiDyPEncoder
from .base import EncodedBatch


class TorchBackend:
    """``encoder`` may be None where the encoder outputs are already known (training rows)."""

    def __init__(
        self, encoder: SiDyPEncoder | None, denoiser: DenoiserEnsemble, device: str = "cpu"
    ):
        self.device = torch.device(device)
        denoiser = denoiser.to(self.device).eval()
        self.encoder = (
            InferenceEncoder(encoder.to(self.device), denoiser).eval() if encoder else None
        )
        self.denoiser = DenoiserStep(denoiser).eval()

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @torch.inference_mode()
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> EncodedBatch:
        if self.encoder is None:
            raise RuntimeError("this TorchBackend was built without an encoder")
        outputs = self.encoder(self._tensor(input_ids), self._tensor(attention_mask))
        return EncodedBatch(*(o.float().cpu().numpy() for o in outputs))

    @torch.inference_mode()
    def condition(self, dynamics: np.ndarray) -> np.ndarray:
        """Raw training dynamics (M, B, F) -> the conditioning ``encode`` would give."""
        return self.denoiser.denoiser.condition(self._tensor(dynamics)).float().cpu().numpy()

    @torch.inference_mode()
    def denoise(
        self, x_t: np.ndarray, t: np.ndarray, conditioning: np.ndarray, y_given: np.ndarray
    ) -> np.ndarray:
        logits = self.denoiser(*(self._tensor(a) for a in (x_t, t, conditioning, y_given)))
        return logits.float().cpu().numpy()
