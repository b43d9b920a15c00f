"""ONNX Runtime back end: the exported encoder and denoiser graphs, CUDA when available."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..graphs import GRAPH_VERSION, INT8_SCHEME, PRECISIONS
from .base import EncodedBatch

if TYPE_CHECKING:
    from ..bundle import Bundle


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxBackend:
    def __init__(self, encoder_path: str, denoiser_path: str,
                 providers: Sequence[str] | None = None, threads: int = 0,
                 embedder_path: str | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = list(providers or default_providers())
        workers = threads or available_cores()
        self.parallel_batches = 1
        if "CUDAExecutionProvider" not in providers and workers > 1:
            # On CPUs, batches side by side on one thread each keep the cores busier than one
            # batch spread over all of them (the encoder's many small ops leave threads
            # waiting): 1.2x refine on 2 cores, the same outputs (docs/benchmarks.md).
            options.intra_op_num_threads = 1
            self.parallel_batches = workers
        elif threads:
            options.intra_op_num_threads = threads
        # Idle ORT threads would otherwise spin and steal the cores that faiss and the numpy
        # refinement need between calls. Spinning made the reverse process 22% faster on an
        # idle machine but 31% slower with one core busy elsewhere (docs/experiments.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.precision = "fp32"
        self.reference: OnnxBackend | None = None
        self._options, self._providers = options, providers
        self.encoder = ort.InferenceSession(encoder_path, options, providers=providers)
        self.denoiser = ort.InferenceSession(denoiser_path, options, providers=providers)
        # The separate embedding model of the neighbour prior, when the bundle has one.
        self.embedder = (ort.InferenceSession(embedder_path, options, providers=providers)
                         if embedder_path else None)

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, providers: Sequence[str] | None = None, precision: str = "auto",
        threads: int = 0,
    ) -> OnnxBackend:
        """``precision``: "fp32"; "int8", the quantized encoder (CPU only: its integer MatMuls are
        ONNX Runtime CPU kernels); "fp16", the float16 encoder of ``export --fp16`` (for CUDA;
        CPUs run it slowly); or "auto": int8 on the CPU when the bundle's int8 graph has per-row
        scales (a row's result then does not depend on its batch, see export/quantize.py), else
        fp32.
        ``threads``: the CPU cores to use (0: every core this process may run on); on a CPU
        that many batches run side by side, one thread each."""
        from ..bundle import BundleError

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, "
                             f"not {precision!r}")
        graphs = bundle.manifest.get("onnx")
        if not graphs:
            raise BundleError(
                f"bundle {bundle.directory}: no ONNX models; run `sidyp-prod export "
                f"{bundle.directory}` first (or use --backend torch)"
            )
        if graphs.get("graph_version") != GRAPH_VERSION:
            raise BundleError(
                f"bundle {bundle.directory}: its ONNX graphs come from an older sidyp-prod; "
                f"re-run `sidyp-prod export {bundle.directory}`"
            )
        providers = list(providers or default_providers())
        encoder_record = graphs["encoder"]
        int8_file = encoder_record.get("int8_file")
        if precision == "auto":
            per_row = encoder_record.get("int8_scheme") == INT8_SCHEME
            precision = "int8" if per_row and "CUDAExecutionProvider" not in providers else "fp32"
        if precision == "int8" and "CUDAExecutionProvider" in providers:
            providers = ["CPUExecutionProvider"]
        files = {"fp32": encoder_record["file"], "int8": int8_file,
                 "fp16": encoder_record.get("fp16_file")}
        if not files[precision]:
            flag = " --fp16" if precision == "fp16" else ""
            raise BundleError(f"bundle {bundle.directory}: no {precision} encoder; run "
                              f"`sidyp-prod export {bundle.directory}{flag}`")
        encoder = files[precision]
        embedder = graphs.get("embedder")
        backend = cls(str(bundle.path(encoder)), str(bundle.path(graphs["denoiser"]["file"])),
                      providers, threads,
                      str(bundle.path(embedder["file"])) if embedder else None)
        backend.precision = precision
        if precision == "int8":
            backend.reference = backend.with_encoder(str(bundle.path(encoder_record["file"])))
        return backend

    def with_encoder(self, encoder_path: str) -> OnnxBackend:
        """The same back end with another (fp32) encoder graph, sharing the other sessions."""
        import copy

        import onnxruntime as ort

        other = copy.copy(self)
        other.encoder = ort.InferenceSession(encoder_path, self._options,
                                             providers=self._providers)
        other.precision, other.reference = "fp32", None
        return other

    def close(self) -> None:
        """Nothing to release: the sessions go with the object."""

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> EncodedBatch:
        outputs = self.encoder.run(
            None, {"input_ids": input_ids, "attention_mask": attention_mask}
        )
        return EncodedBatch.from_batch_first(*outputs)

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if self.embedder is None:
            raise RuntimeError("this bundle has no separate embedding model")
        (embedding,) = self.embedder.run(
            None, {"input_ids": input_ids, "attention_mask": attention_mask}
        )
        return embedding

    def reverse(
        self, noise: np.ndarray, conditioning: np.ndarray, y_given: np.ndarray
    ) -> np.ndarray:
        (logits,) = self.denoiser.run(None, {
            "noise": np.ascontiguousarray(noise, dtype=np.float32),
            "conditioning": np.ascontiguousarray(conditioning, dtype=np.float32),
            "y_given": np.ascontiguousarray(y_given, dtype=np.float32),
        })
        return logits
