"""The one small interface every runtime back end implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class EncodedBatch:
    """What the encoder gives the refinement for a batch of B rows (M branches, C classes)."""

    probs: np.ndarray  # (M, B, C) classifier branch probabilities p(y_given | x)
    conditioning: np.ndarray  # (M, B, W) training dynamics w(x) as the denoiser consumes them
    embedding: np.ndarray  # (B, H) normalised sentence embedding for neighbour search


class ModelBackend(Protocol):
    """Runs the two models. The refinement core only ever calls these two methods."""

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> EncodedBatch:
        """Token ids and mask (B, N) int64 -> :class:`EncodedBatch`."""
        ...

    def denoise(
        self, x_t: np.ndarray, t: np.ndarray, conditioning: np.ndarray, y_given: np.ndarray
    ) -> np.ndarray:
        """x_t (M, R, C) float32, t (R,) int64, conditioning (M, R, W), y_given (R, C)
        -> logits (M, R, C)."""
        ...
