"""The trained models and reference set <-> a model bundle directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from . import __version__
from .bundle import Bundle, save_bundle
from .config import SiDyPConfig
from .encoder import PretrainedEncoder, configure_tokenizer
from .models import BertShape, DenoiserEnsemble, SiDyPEncoder
from .neighbors import NeighborIndex
from .training import TrainingResult

ENCODER_FILE = "encoder.safetensors"
DENOISER_FILE = "denoiser.safetensors"
REFERENCE_FILE = "reference.safetensors"
TOKENIZER_FILE = "tokenizer.json"


def _numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def save_trained(
    directory: str | Path,
    result: TrainingResult,
    labels: list[str],
    config: SiDyPConfig,
    pretrained: PretrainedEncoder,
    encoder_name: str,
    summary: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    tokenizer = Tokenizer.from_str(pretrained.tokenizer.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    shape = BertShape.from_config(pretrained.config)
    manifest = {
        "kind": "sidyp-prod-bundle",
        "sidyp_prod_version": __version__,
        "labels": labels,
        "config": config.to_dict(),
        "encoder": {
            "name": encoder_name,
            "bert": shape.__dict__,
            "pooling": "mean",
            "sentence_embedding": "mean-pooled pretrained top layers, L2-normalised",
        },
        "branches": config.branches,
        "snapshot_epochs": result.snapshot_epochs,
        "feature_dim": int(result.features.dynamics.shape[-1]),
        "training": summary,
    }
    arrays = {
        ENCODER_FILE: _numpy_state(result.encoder),
        DENOISER_FILE: _numpy_state(result.denoiser),
        REFERENCE_FILE: {
            "embeddings": result.embeddings.astype(np.float32),
            "labels": result.given.astype(np.int64),
            "clean": result.clean,
            "centroids": result.centroids,
        },
    }
    files = {TOKENIZER_FILE: tokenizer.to_str().encode("utf-8")}
    return save_bundle(directory, manifest, arrays, files, overwrite=overwrite)


@dataclass
class LoadedModel:
    """Everything refinement needs from a bundle except the back end's models."""

    bundle: Bundle
    labels: list[str]
    config: SiDyPConfig
    tokenizer: Tokenizer
    indexes: list[NeighborIndex]
    temperature: float = 1.0  # calibration fitted at training time
    label_bias: np.ndarray | None = None  # per-class calibration fitted at training time
    label_shares: np.ndarray | None = None  # the training labels' class shares, when divided by

    @property
    def n_classes(self) -> int:
        return len(self.labels)


def load_bundle_tokenizer(bundle: Bundle) -> Tokenizer:
    """The bundle's tokenizer, truncating and padding as the encoder expects; on its own so a
    tokenizing stage need not build the reference set's indexes."""
    config = SiDyPConfig.from_bundle(bundle.manifest["config"])
    return configure_tokenizer(
        Tokenizer.from_file(str(bundle.path(TOKENIZER_FILE))), config.max_length
    )


def load_model(bundle: Bundle, use_gpu: bool | None = None) -> LoadedModel:
    manifest = bundle.manifest
    config = SiDyPConfig.from_bundle(manifest["config"])
    tokenizer = load_bundle_tokenizer(bundle)
    reference = bundle.arrays(REFERENCE_FILE)
    indexes = [
        NeighborIndex(reference["embeddings"][clean], reference["labels"][clean], use_gpu)
        for clean in reference["clean"].astype(bool)
    ]
    training = manifest.get("training", {})
    temperature = float(training.get("temperature", 1.0))
    # Bundles written before the per-class step have no bias: they keep the global temperature.
    bias = training.get("label_bias")
    label_bias = np.asarray(bias, dtype=np.float64) if bias is not None else None
    shares = training.get("label_shares") if config.label_share_correction else None
    return LoadedModel(
        bundle, list(manifest["labels"]), config, tokenizer, indexes, temperature, label_bias,
        np.asarray(shares, dtype=np.float64) if shares is not None else None,
    )


def load_torch_models(bundle: Bundle) -> tuple[SiDyPEncoder, DenoiserEnsemble]:
    manifest = bundle.manifest
    config = SiDyPConfig.from_bundle(manifest["config"])
    shape = BertShape(**manifest["encoder"]["bert"])
    n_classes = len(manifest["labels"])
    encoder = SiDyPEncoder(
        shape,
        config.trainable_layers,
        manifest["branches"],
        len(manifest["snapshot_epochs"]),
        n_classes,
    )
    encoder.load_state_dict(_torch_state(bundle.arrays(ENCODER_FILE)))
    denoiser = DenoiserEnsemble(
        manifest["branches"],
        n_classes,
        manifest["feature_dim"],
        config.denoiser_width,
        config.diffusion_steps,
    )
    denoiser.load_state_dict(_torch_state(bundle.arrays(DENOISER_FILE)))
    return encoder.eval(), denoiser.eval()


def _torch_state(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
