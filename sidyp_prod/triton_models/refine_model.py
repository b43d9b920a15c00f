"""Triton python-backend BLS model: raw text and the LLM's label in, the refined label out.

Holds the bundle copied next to it (tokenizer, faiss reference set, calibration) and runs
sidyp-prod's own refinement, calling the ``sidyp_encoder`` and ``sidyp_denoiser`` models on the
same server for the network parts. Written by ``sidyp-prod export --triton-repo``; needs
``sidyp-prod`` installed in the server's Python.
"""

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from sidyp_prod.graphs import (
    DENOISER_MODEL,
    EMBEDDER_MODEL,
    ENCODER_MODEL,
    REFERENCE_ENCODER_FILE,
)


class ServerModels:
    """sidyp-prod's back-end interface (encode, embed, reverse) over BLS requests to this
    server. ``encoder_outputs``: the encoder graph's output names (the bundle's record)."""

    def __init__(self, max_chains: int, encoder_outputs: list[str], precision: str = "fp32"):
        self.max_chains = max_chains
        self.encoder_outputs = encoder_outputs
        self.parallel_batches = 1
        self.precision = precision  # of the encoder the server runs (its configuration says)
        self.reference = None
        self.local_encoder = None  # an fp32 ONNX Runtime session, for the reference only

    def close(self) -> None:
        """BLS requests hold nothing between calls."""

    @staticmethod
    def _call(model: str, inputs: dict, outputs: list) -> list:
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=outputs,
            inputs=[pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in inputs.items()],
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in outputs]

    def with_local_encoder(self, path: str) -> "ServerModels":
        """These models with the encoder run here from ``path`` (the fp32 graph) instead."""
        import onnxruntime as ort

        other = ServerModels(self.max_chains, self.encoder_outputs)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # a few rows a batch; the server's models need the rest
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        other.local_encoder = ort.InferenceSession(path, options,
                                                   providers=["CPUExecutionProvider"])
        return other

    def encode(self, input_ids, attention_mask):
        from sidyp_prod.backends.base import EncodedBatch

        if self.local_encoder is not None:
            return EncodedBatch.from_batch_first(*self.local_encoder.run(
                None, {"input_ids": input_ids, "attention_mask": attention_mask}))
        outputs = self._call(
            ENCODER_MODEL,
            {"input_ids": input_ids, "attention_mask": attention_mask},
            self.encoder_outputs,
        )
        return EncodedBatch.from_batch_first(*outputs)

    def embed(self, input_ids, attention_mask):
        return self._call(EMBEDDER_MODEL, {"input_ids": input_ids,
                                           "attention_mask": attention_mask}, ["embedding"])[0]

    def reverse(self, noise, conditioning, y_given):
        parts = []
        for start in range(0, len(noise), self.max_chains):
            part = slice(start, start + self.max_chains)
            inputs = {"noise": noise[part].astype(np.float32),
                      "conditioning": conditioning[part].astype(np.float32),
                      "y_given": y_given[part].astype(np.float32)}
            parts.append(self._call(DENOISER_MODEL, inputs, ["logits"])[0])
        return np.concatenate(parts)


def _strings(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v)
            for v in tensor.as_numpy().reshape(-1)]


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sidyp_prod.bundle import load_bundle
        from sidyp_prod.model_io import load_model

        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        directory = Path(args["model_repository"]) / args["model_version"] / "bundle"
        self.model = load_model(load_bundle(directory), use_gpu=False)
        outputs = list(self.model.bundle.manifest["onnx"]["encoder"]["outputs"])
        self.models = ServerModels(int(parameters.get("denoiser_max_batch_size", "4096")),
                                   outputs, parameters.get("encoder_precision", "fp32"))
        if self.models.precision == "int8":
            version = Path(args["model_repository"]) / args["model_version"]
            self.models.reference = self.models.with_local_encoder(
                str(version / REFERENCE_ENCODER_FILE))

    def execute(self, requests: list) -> list:
        """All requests of a dynamic batch are refined together, each answered on its own."""
        from sidyp_prod.corpus import Row
        from sidyp_prod.pipeline import refine_rows

        rows, spans, responses = [], [], [None] * len(requests)
        for i, request in enumerate(requests):
            texts = _strings(request, "text")
            labels = _strings(request, "label") or [""] * len(texts)
            unknown = sorted({x for x in labels if x and x not in self.model.labels})
            message = None
            if len(labels) != len(texts):
                message = f"label: {len(labels)} values for {len(texts)} texts"
            elif unknown:
                message = f"label: {unknown} not in the bundle's labels {self.model.labels}"
            if message:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(message))
                continue
            start = len(rows)
            for text, label in zip(texts, labels, strict=True):
                rows.append(Row(len(rows) + 1, {}, len(rows) + 1, text, label or None))
            spans.append((i, start, len(rows)))
        try:
            refined = refine_rows(rows, self.model, self.models) if rows else []
        except Exception as exc:
            error = pb_utils.TritonError(str(exc))
            for i, _, _ in spans:
                responses[i] = pb_utils.InferenceResponse(error=error)
            return responses
        for i, start, end in spans:
            part = refined[start:end]
            score = [np.nan if r["label_score"] is None else r["label_score"] for r in part]
            tensors = [
                pb_utils.Tensor("predicted_label", np.array(
                    [[r["predicted_label"].encode("utf-8")] for r in part], dtype=np.object_)),
                pb_utils.Tensor("confidence", np.array(
                    [[r["confidence"]] for r in part], dtype=np.float32)),
                pb_utils.Tensor("label_score", np.array(score, dtype=np.float32)[:, None]),
                pb_utils.Tensor("is_label_issue", np.array(
                    [[r["is_label_issue"]] for r in part], dtype=bool)),
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses
