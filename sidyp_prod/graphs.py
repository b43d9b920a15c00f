"""The exported graphs' contract: file names, tensor names, the layout version and the Triton
model names. The exporter, the ONNX and Triton back ends, the Triton repository writer and the
server-side models all read them here. Torch-free: serving imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bundle import Bundle

# Layout of the exported graphs; a bundle whose record says another is re-exported.
GRAPH_VERSION = 2
OPSET = 17

ENCODER_ONNX = "encoder.onnx"
ENCODER_INT8_ONNX = "encoder.int8.onnx"
ENCODER_FP16_ONNX = "encoder.fp16.onnx"  # export --fp16: for the CUDA provider
# The int8 encoder's quantization (export/quantize.py); a record without it is an older one
# (per-batch scales, or 8-bit weights that saturate on CPUs without AVX-512 VNNI) that only an
# explicit --precision int8 runs.
INT8_SCHEME = "per-row-uint8-w7"
# The fp32 encoder graph beside the Triton BLS model, which re-checks int8 close calls with it.
REFERENCE_ENCODER_FILE = "encoder.fp32.onnx"
# --precision: "auto" runs the int8 encoder on CPUs when it has per-row scales, else fp32;
# "fp16" (a graph written by export --fp16) is for GPUs.
PRECISIONS = ("auto", "fp32", "int8", "fp16")
DENOISER_ONNX = "denoiser.onnx"
EMBEDDER_ONNX = "embedder.onnx"  # a separate embedding model (train --embedding-model)
GRAPHS_JSON = "onnx.json"  # the record of graphs exported outside the bundle (export --out)

ENCODER_INPUTS = ("input_ids", "attention_mask")
# Without a separate embedding model; with one, the encoder gives the first two only.
ENCODER_OUTPUTS = ("probs", "conditioning", "embedding")
EMBEDDER_OUTPUTS = ("embedding",)
DENOISER_INPUTS = ("noise", "conditioning", "y_given")
DENOISER_OUTPUTS = ("logits",)

ENCODER_MODEL = "sidyp_encoder"
DENOISER_MODEL = "sidyp_denoiser"
EMBEDDER_MODEL = "sidyp_embedder"
# Text -> token ids (python backend), and the ensemble text -> tokenizer -> encoder.
TOKENIZER_MODEL = "sidyp_tokenizer"
ENCODE_ENSEMBLE = "sidyp_encode"
# Triton model name of each graph of the bundle's ONNX record.
GRAPH_MODELS = {"encoder": ENCODER_MODEL, "denoiser": DENOISER_MODEL, "embedder": EMBEDDER_MODEL}


def onnx_paths(bundle: Bundle, onnx_dir: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """The graph record and the directory holding the files: the bundle, or an export dir."""
    from .bundle import BundleError, file_digest

    if onnx_dir is None:
        if not bundle.manifest.get("onnx"):
            raise BundleError(f"bundle {bundle.directory}: no ONNX graphs; run `sidyp-prod "
                              f"export {bundle.directory}` first")
        return bundle.manifest["onnx"], bundle.directory
    record = json.loads((Path(onnx_dir) / GRAPHS_JSON).read_text())
    if record.get("bundle_digest") != file_digest(bundle):
        raise BundleError(f"{onnx_dir}: exported from another bundle than {bundle.directory}")
    return record, Path(onnx_dir)
