"""A model bundle as refinement reads it: the tokenizers, the reference set's neighbour indexes
and the fitted calibration. Torch-free: the refine path, the Triton models and the Ray actors
import it. Writing a bundle and its PyTorch modules: :mod:`sidyp_prod.torch_bundle`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .bundle import Bundle, BundleError
from .config import SiDyPConfig
from .encoder import configure_tokenizer
from .neighbors import NeighborIndex

ENCODER_FILE = "encoder.safetensors"
DENOISER_FILE = "denoiser.safetensors"
REFERENCE_FILE = "reference.safetensors"
TOKENIZER_FILE = "tokenizer.json"
# A separate sentence-embedding model (--embedding-model): its weights and tokenizer.
EMBEDDER_FILE = "embedder.safetensors"
EMBEDDING_TOKENIZER_FILE = "embedding_tokenizer.json"


def separate_embedder(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The record of a bundle's separate embedding model, or None (the encoder's own layers;
    bundles written before the choice existed have no record)."""
    record = manifest.get("embedding_model")
    return None if record is None or record.get("shared_with_encoder") else record


def embedding_width(manifest: dict[str, Any]) -> int:
    """The width of the sentence embeddings (the reference set's)."""
    record = separate_embedder(manifest) or manifest["encoder"]
    return int(record["hidden_size"] if "hidden_size" in record else record["bert"]["hidden_size"])


@dataclass
class LoadedModel:
    """Everything refinement needs from a bundle except the back end's models."""

    bundle: Bundle
    labels: list[str]
    config: SiDyPConfig
    tokenizer: Tokenizer
    indexes: list[NeighborIndex]
    # The separate embedding model's tokenizer (None: the encoder's graph gives the embedding).
    embedding_tokenizer: Tokenizer | None
    temperature: float = 1.0  # calibration fitted at training time
    label_bias: np.ndarray | None = None  # per-class calibration fitted at training time
    label_shares: np.ndarray | None = None  # the training labels' class shares, when divided by

    @property
    def n_classes(self) -> int:
        return len(self.labels)


def load_bundle_tokenizer(bundle: Bundle, embedding: bool = False) -> Tokenizer:
    """The bundle's tokenizer (``embedding``: the separate embedding model's), truncating and
    padding as its model expects; on its own so a tokenizing stage need not build the
    reference set's indexes."""
    config = SiDyPConfig.from_bundle(bundle.manifest["config"])
    record = separate_embedder(bundle.manifest) if embedding else bundle.manifest["encoder"]
    if record is None:
        raise BundleError(f"bundle {bundle.directory}: no separate embedding model")
    pad_token = record.get("pad_token", "[PAD]")  # older bundles: BERT's
    name = record["tokenizer"] if embedding else TOKENIZER_FILE
    return configure_tokenizer(
        Tokenizer.from_file(str(bundle.path(name))), config.max_length, pad_token
    )


def load_model(bundle: Bundle, use_gpu: bool | None = None) -> LoadedModel:
    manifest = bundle.manifest
    config = SiDyPConfig.from_bundle(manifest["config"])
    tokenizer = load_bundle_tokenizer(bundle)
    embedding_tokenizer = (load_bundle_tokenizer(bundle, embedding=True)
                           if separate_embedder(manifest) else None)
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
        bundle, list(manifest["labels"]), config, tokenizer, indexes, embedding_tokenizer,
        temperature, label_bias,
        np.asarray(shares, dtype=np.float64) if shares is not None else None,
    )
