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
    # (B, H) normalised sentence embedding for neighbour search; None from ``encode`` when the
    # bundle has a separate embedding model (then ``embed`` gives it, from its own tokens).
    embedding: np.ndarray | None

    @classmethod
    def from_batch_first(
        cls, probs: np.ndarray, conditioning: np.ndarray, embedding: np.ndarray | None = None
    ) -> EncodedBatch:
        """From the exported graphs' layout, (B, M, C) and (B, M, W): rows first, as Triton's
        batcher needs; the refinement works branch first."""
        return cls(probs.transpose(1, 0, 2), conditioning.transpose(1, 0, 2), embedding)

    def rows(self, stop: int) -> EncodedBatch:
        """The first ``stop`` rows."""
        embedding = None if self.embedding is None else self.embedding[:stop]
        return EncodedBatch(self.probs[:, :stop], self.conditioning[:, :stop], embedding)


class ModelBackend(Protocol):
    """Runs the models. The refinement core only ever calls these methods; ``embed`` only for
    a bundle with a separate embedding model."""

    precision: str  # the encoder graph's numbers: "fp32", "int8" (ONNX Runtime on the CPU), "fp16"
    # Encoder batches the refinement keeps in flight at once: more than one for a remote
    # server, whose batcher then has requests to merge, and for ONNX Runtime on a multi-core
    # CPU (one batch a core, one thread each); 1 otherwise.
    parallel_batches: int
    # An fp32 back end that refines an int8 encoder's close calls again (pipeline.CLOSE_CALL),
    # so that labels agree with the fp32 graph's; None where the encoder is fp32 already.
    reference: ModelBackend | None

    def close(self) -> None:
        """Release connections and worker threads (a no-op for an in-process runtime)."""
        ...

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> EncodedBatch:
        """Token ids and mask (B, N) int64 -> :class:`EncodedBatch`."""
        ...

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The separate embedding model's token ids and mask (B, N) int64 -> (B, H) float32
        normalised sentence embeddings."""
        ...

    def reverse(
        self, noise: np.ndarray, conditioning: np.ndarray, y_given: np.ndarray
    ) -> np.ndarray:
        """The whole reverse process of R chains (the bundle's schedule):
        noise (R, T, M, C) float32 standard normal, conditioning (R, M, W), y_given (R, C)
        -> the last step's logits (R, M, C)."""
        ...
