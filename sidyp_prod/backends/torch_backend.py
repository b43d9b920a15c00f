"""The reference back end: the PyTorch modules, in process."""

from __future__ import annotations

import numpy as np
import torch

from ..models import DenoiserEnsemble, SiDyPEncoder
from .base import EncodedBatch


class TorchBackend:
    """``encoder`` may be None where the encoder outputs are already known (training rows)."""

    def __init__(
        self, encoder: SiDyPEncoder | None, denoiser: DenoiserEnsemble, device: str = "cpu"
    ):
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval() if encoder is not None else None
        self.denoiser = denoiser.to(self.device).eval()

    @torch.inference_mode()
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> EncodedBatch:
        if self.encoder is None:
            raise RuntimeError("this TorchBackend was built without an encoder")
        probs, dynamics, embedding = self.encoder(
            torch.from_numpy(input_ids).to(self.device),
            torch.from_numpy(attention_mask).to(self.device),
        )
        return EncodedBatch(
            probs.float().cpu().numpy(),
            dynamics.float().cpu().numpy(),
            embedding.float().cpu().numpy(),
        )

    @torch.inference_mode()
    def denoise(
        self, x_t: np.ndarray, t: np.ndarray, dynamics: np.ndarray, y_given: np.ndarray
    ) -> np.ndarray:
        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

        logits = self.denoiser(tensor(x_t), tensor(t), tensor(dynamics), tensor(y_given))
        return logits.float().cpu().numpy()
