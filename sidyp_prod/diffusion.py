"""Simplex diffusion over labels: schedule, forward noising and the reverse process.

Pure numpy. The denoiser is any callable ``denoise(x_t, t) -> logits``; whether it runs in
PyTorch, ONNX Runtime or on a Triton server is the caller's business.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Denoiser = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``denoise(x_t[..., C] float32, t[...] int64) -> logits[..., C]``; t has x_t's shape minus C."""


def cosine_alpha_bar(steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cumulative signal level alpha_bar_t, t = 0..steps-1, of the improved-DDPM cosine schedule."""

    def f(t: np.ndarray) -> np.ndarray:
        return np.cos((t / steps + s) / (1 + s) * np.pi / 2) ** 2

    t = np.arange(steps + 1, dtype=np.float64)
    betas = np.clip(1.0 - f(t[1:]) / f(t[:-1]), 0.0, max_beta)
    return np.cumprod(1.0 - betas)


def simplex(labels: np.ndarray, n_classes: int, scale: float) -> np.ndarray:
    """Class index -> vector with +scale at the class and -scale elsewhere; -1 -> zeros."""
    labels = np.asarray(labels)
    out = np.full((*labels.shape, n_classes), -scale, dtype=np.float32)
    np.put_along_axis(out, np.clip(labels, 0, None)[..., None], scale, axis=-1)
    out[labels < 0] = 0.0
    return out


def q_sample(
    x0: np.ndarray, t: np.ndarray, alpha_bar: np.ndarray, noise: np.ndarray, scale: float
) -> np.ndarray:
    """Forward noising x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, eps ~ N(0, scale^2 I)."""
    ab = alpha_bar[t][..., None].astype(np.float32)
    return np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * scale * noise


@dataclass(frozen=True)
class ReverseSchedule:
    """Which training timestep the denoiser sees at each inference step, and the noise levels."""

    timesteps: np.ndarray  # (n,) int64, passed to the denoiser at inference step i
    alpha_bar: np.ndarray  # (n,) float64, signal level used to re-noise to step i

    @classmethod
    def build(cls, train_steps: int, infer_steps: int, mapping: str = "spaced") -> ReverseSchedule:
        if mapping == "spaced":
            # DDIM-style: the inference steps are training timesteps spaced over [0, T_train).
            timesteps = (np.arange(infer_steps) * train_steps) // infer_steps
            return cls(timesteps.astype(np.int64), cosine_alpha_bar(train_steps)[timesteps])
        if mapping == "authors":
            # The authors' code: own short cosine schedule, step index passed as the timestep.
            return cls(np.arange(infer_steps, dtype=np.int64), cosine_alpha_bar(infer_steps))
        raise ValueError(f"unknown timestep mapping {mapping!r}")

    @classmethod
    def from_config(cls, config: Any) -> ReverseSchedule:
        """The schedule a SiDyPConfig's diffusion settings describe."""
        return cls.build(config.diffusion_steps, config.inference_steps, config.timestep_mapping)

    @property
    def steps(self) -> int:
        return len(self.timesteps)


def reverse_process(
    denoise: Denoiser, noise: np.ndarray, schedule: ReverseSchedule, scale: float
) -> np.ndarray:
    """Run the reverse process from pure noise and return the last step's logits.

    ``noise`` has shape (steps, ..., C) and holds standard normal draws: noise[0] starts the chain,
    noise[j] re-noises before step j. Each step projects the prediction to the simplex (argmax) and
    re-noises it to the next, lower level.
    """
    n_classes = noise.shape[-1]
    x = scale * noise[0]
    batch_shape = noise.shape[1:-1]
    logits = np.zeros(noise.shape[1:], dtype=np.float32)
    for j, i in enumerate(range(schedule.steps - 1, -1, -1)):
        t = np.full(batch_shape, schedule.timesteps[i], dtype=np.int64)
        logits = np.asarray(denoise(x.astype(np.float32), t), dtype=np.float32)
        if i == 0:
            break
        x0 = simplex(logits.argmax(-1), n_classes, scale)
        ab = schedule.alpha_bar[i - 1]
        x = np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * scale * noise[j + 1]
    return logits


def text_key(text: str) -> int:
    """A stable 64-bit key of a text, so a row's random draws do not depend on its batch."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def row_noise(seed: int, keys: Sequence[int], shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal draws of ``shape`` per row, seeded by (seed, key): batch-invariant."""
    out = np.empty((len(keys), *shape), dtype=np.float32)
    for r, key in enumerate(keys):
        rng = np.random.Generator(np.random.Philox(key=[seed & (2**64 - 1), key]))
        out[r] = rng.standard_normal(shape, dtype=np.float32)
    return out


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)
