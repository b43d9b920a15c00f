"""Runtime back ends behind one loading function."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import EncodedBatch, ModelBackend

if TYPE_CHECKING:
    from ..bundle import Bundle

BACKENDS = ("onnx", "torch", "triton")


def backend_choice(
    backend: str, triton_url: str | None = None, triton_retry_seconds: float = 120.0
) -> tuple[str, dict[str, object]]:
    """``--backend`` with ``--triton-url`` folded in: the back end's name and the options
    load_backend needs for it."""
    if triton_url:
        return "triton", {"url": triton_url, "retry_seconds": triton_retry_seconds}
    return backend, {}


def load_backend(
    bundle: Bundle,
    name: str = "onnx",
    device: str | None = None,
    precision: str = "auto",
    url: str | None = None,
    threads: int = 0,
    **options: object,
) -> ModelBackend:
    """Build the named back end for a loaded bundle.

    ``onnx``: ONNX Runtime on the bundle's exported graphs (CUDA provider when available;
    ``precision`` picks the encoder graph: auto, fp32, int8 or fp16, see
    OnnxBackend.from_bundle);
    ``torch``: the PyTorch reference (CUDA when available). ``device`` forces "cpu" or "cuda";
    ``triton``: the models on the Triton server at ``url`` (grpc://HOST:PORT or
    http://HOST:PORT), checked against the bundle first; ``options`` go to TritonBackend.
    ``threads`` caps the CPU threads of a local back end (0: the runtime's default, one per
    core); a process running several back ends side by side (Ray actors) sets it. Triton
    computes on the server and ignores it.
    """
    if name == "onnx":
        from .onnx_backend import OnnxBackend

        providers = ["CPUExecutionProvider"] if device == "cpu" else None
        return OnnxBackend.from_bundle(bundle, providers, precision, threads)
    if name == "torch":
        from ..checks import require_train_extra

        require_train_extra("the PyTorch back end (--backend torch)")
        if precision not in ("auto", "fp32"):
            raise ValueError(f"--precision {precision} is the ONNX back end's graph; torch "
                             "runs fp32")
        import torch

        from .torch_backend import TorchBackend

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-module setting
        return TorchBackend.from_bundle(bundle, device)
    if name == "triton":
        from .triton_backend import TritonBackend

        if not url:
            raise ValueError("the triton backend needs the server's URL")
        backend = TritonBackend(url, **options)  # type: ignore[arg-type]
        backend.check(bundle)  # learns which encoder graph the server runs
        if precision != "auto" and precision != backend.precision:
            raise ValueError(f"the Triton server runs the {backend.precision} encoder graph, "
                             f"not {precision} (its configuration picks the graph)")
        return backend
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "EncodedBatch", "ModelBackend", "backend_choice", "load_backend"]
