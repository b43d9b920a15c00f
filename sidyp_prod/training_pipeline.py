"""Training a bundle from parsed rows: Stage I and II (``training.train_sidyp``), the
post-training stage (the training rows' own labels and the output calibration,
``post_training.fit_training_rows``), then the bundle on disk and its ONNX graphs.

PyTorch side (``pip install 'sidyp-prod[train]'``); ``api.train`` reads the corpus and writes
what the user asked for around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import SiDyPConfig
from .device import resolve_device
from .post_training import TrainingRowsFit, fit_training_rows
from .pretrained import PretrainedEncoder, load_pretrained, resolve_encoder
from .torch_bundle import save_trained
from .training import TrainingResult, train_sidyp


@dataclass
class TrainedModel:
    result: TrainingResult  # Stage I and II
    fit: TrainingRowsFit  # the post-training stage
    pretrained: PretrainedEncoder
    embedder: PretrainedEncoder | None  # the prior's separate embedding model, if any


def train_model(
    texts: list[str],
    given: np.ndarray,
    labels: list[Any],
    config: SiDyPConfig,
    blocked: list[int],
    *,
    encoder: str | None = None,
    embedding_model: str | None = None,
    device: str = "auto",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    work_dir: Path | None = None,
    trusted: np.ndarray | None = None,
) -> TrainedModel:
    """Every training stage on ``texts`` and their given-label indices (-1: none).
    ``blocked``: classes that are never a change target (too few rows); ``trusted``: labels from
    a person (class indices, -1: none), only for checking the change rule (trusted.py)."""
    torch_device = resolve_device(device)
    pretrained = load_pretrained(encoder)
    separate = (embedding_model is not None
                and resolve_encoder(embedding_model)[0] != pretrained.name)
    embedder = load_pretrained(embedding_model, role="embedding model") if separate else None
    result = train_sidyp(texts, given, len(labels), pretrained, config, progress, log,
                         torch_device, work_dir=work_dir, embedder=embedder)
    start = time.perf_counter()
    fit = fit_training_rows(result, texts, given, labels, config, blocked, torch_device,
                            trusted)
    result.timings["predict"] = time.perf_counter() - start
    return TrainedModel(result, fit, pretrained, embedder)


def save_model(
    out: str | Path,
    trained: TrainedModel,
    labels: list[Any],
    config: SiDyPConfig,
    record: dict[str, Any],
    positions: np.ndarray,
    *,
    overwrite: bool = False,
    export_texts: Sequence[str] | None = None,
) -> None:
    """The bundle at ``out`` (``record``: the manifest's training record; ``positions``: each
    training row's place among the corpus's usable rows) with the fitted calibration as its
    own file; with ``export_texts`` (the training texts) also its ONNX graphs, the int8 one
    calibrated on a sample of them."""
    save_trained(out, trained.result, labels, config, trained.pretrained,
                 {**record, "history": trained.result.history}, trained.fit.calibration,
                 positions, overwrite=overwrite, embedder=trained.embedder)
    if export_texts is not None:
        from .export.onnx import export_onnx
        from .export.quantize import calibration_sample

        export_onnx(out, calibration_texts=calibration_sample(export_texts))
