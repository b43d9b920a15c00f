"""Triton back end: the encoder and the denoiser run on a Triton Inference Server.

The refinement core stays in this process; ``encode`` and ``reverse`` become requests to the
``sidyp_encoder`` and ``sidyp_denoiser`` models written by ``export --triton-repo``. Batches larger
than a model's ``max_batch_size`` are split and the parts sent concurrently (one client per
thread), and ``parallel_batches`` lets the refinement keep several encoder batches in flight, so
the server's dynamic batcher has requests to merge and overlaps them with the client's own work.
Transient failures
(connection refused, UNAVAILABLE, timeouts, a model still loading after a restart) are retried with
exponential backoff until ``retry_seconds`` have passed without an answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from ..graphs import DENOISER_MODEL, EMBEDDER_MODEL, ENCODER_MODEL, ENCODER_OUTPUTS, GRAPH_MODELS
from .base import EncodedBatch, ModelBackend

if TYPE_CHECKING:
    from ..bundle import Bundle

# Manifest dtype -> (the client's tensor type, the model config's data_type).
DTYPES = {"float32": ("FP32", "TYPE_FP32"), "int64": ("INT64", "TYPE_INT64")}

TRANSIENT_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED")
TRANSIENT_TEXT = (
    "unavailable", "connect", "connection", "timed out", "timeout", "socket closed",
    "not ready", "unknown model", "is not found", "broken pipe", "reset by peer", "eof",
)


def triton_dims(shape: list) -> list[int]:
    """A manifest shape (first axis = the batch) -> Triton dims: the rest, -1 where variable."""
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


class TritonError(RuntimeError):
    """The server is unusable for this bundle, or stayed unreachable past the retry budget."""


@dataclass(frozen=True)
class ServerAddress:
    protocol: str  # "grpc" or "http"
    host_port: str

    @classmethod
    def parse(cls, url: str) -> ServerAddress:
        parsed = urlparse(url if "://" in url else f"grpc://{url}")
        if parsed.scheme not in ("grpc", "http") or not parsed.netloc:
            raise ValueError(
                f"Triton URL {url!r}: expected grpc://HOST:PORT or http://HOST:PORT"
            )
        return cls(parsed.scheme, parsed.netloc)


def is_transient(error: BaseException) -> bool:
    """Worth retrying: the server may come back; a bad request will not get better."""
    if isinstance(error, (ConnectionError, TimeoutError, OSError)):
        return True
    status = str(getattr(error, "status", lambda: "")() or "")
    text = f"{status} {error}".lower()
    return any(s.lower() in status.lower() for s in TRANSIENT_STATUS) or any(
        t in text for t in TRANSIENT_TEXT
    )


class TritonBackend:
    def __init__(
        self,
        url: str,
        concurrency: int = 4,
        retry_seconds: float = 120.0,
        timeout: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
        log: Callable[[str], None] | None = None,
    ):
        self.address = ServerAddress.parse(url)
        self.log = log  # told once when the server does not answer and the retries begin
        self._told_waiting = False
        self.url = url
        self.retry_seconds = retry_seconds
        self.timeout = timeout
        self.sleep = sleep
        self.precision = "fp32"
        # A server running the int8 encoder: close calls go to the bundle's fp32 graph here.
        self.reference: ModelBackend | None = None
        # refine_rows keeps this many encoder batches in flight: the server overlaps them.
        self.parallel_batches = max(1, concurrency)
        self.max_batch = dict.fromkeys(GRAPH_MODELS.values(), 1)
        self.encoder_outputs = list(ENCODER_OUTPUTS)  # check() reads the bundle's record
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency),
                                        thread_name_prefix="triton")

    # -- clients ------------------------------------------------------------------------------

    def _module(self) -> Any:
        try:
            if self.address.protocol == "grpc":
                import tritonclient.grpc as module
            else:
                import tritonclient.http as module
        except ImportError as exc:
            raise TritonError(
                "the Triton back end needs tritonclient: pip install 'sidyp-prod[triton]'"
            ) from exc
        return module

    def _client(self) -> Any:
        """One client per thread: the HTTP client is not thread-safe."""
        client = getattr(self._local, "client", None)
        if client is None:
            module = self._module()
            if self.address.protocol == "grpc":
                client = module.InferenceServerClient(self.address.host_port)
            else:
                client = module.InferenceServerClient(
                    self.address.host_port, connection_timeout=self.timeout,
                    network_timeout=self.timeout,
                )
            self._local.client = client
        return client

    def _retrying(self, what: str, call: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.25
        while True:
            try:
                return call()
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    kind = "unreachable" if is_transient(exc) else "failed"
                    raise TritonError(
                        f"Triton server {self.url} {kind} ({what}): {exc}"
                        + (f" (retried for {self.retry_seconds:g} s)" if kind == "unreachable"
                           else "")
                    ) from exc
                self._local.client = None  # reconnect after a restart
                if self.log is not None and not self._told_waiting:
                    self._told_waiting = True
                    self.log(f"Triton server {self.url} does not answer ({what}): retrying for "
                             f"up to {self.retry_seconds:g} s (--triton-retry-seconds)")
                self.sleep(delay)
                delay = min(delay * 2, 8.0)

    def _config(self, model: str) -> dict:
        def fetch() -> dict:
            if self.address.protocol == "grpc":
                return self._client().get_model_config(model, as_json=True)["config"]
            return self._client().get_model_config(model)

        return self._retrying(f"config of {model}", fetch)

    # -- the check before the first row ------------------------------------------------------

    def check(self, bundle: Bundle) -> None:
        """Refuse a server whose models are not this bundle's: names, types, dims, graph hash."""
        graphs = bundle.manifest.get("onnx") or {}
        problems = []
        parts = [part for part in GRAPH_MODELS if part in graphs or part != "embedder"]
        for part in parts:
            model = GRAPH_MODELS[part]
            try:
                config = self._config(model)
            except TritonError as exc:
                raise TritonError(f"{exc}; is the repository of `sidyp-prod export "
                                  f"--triton-repo` loaded on that server?") from exc
            record = graphs.get(part)
            if record is None:
                raise TritonError(f"bundle {bundle.directory}: no ONNX graphs; run export first")
            problems += config_problems(config, record, model)
            parameters = {k: v.get("string_value") for k, v in
                          config.get("parameters", {}).items()}
            # The encoder's CPU configurations serve the int8 graph, the GPU ones the fp32 one.
            served = {bundle.files.get(record[key], {}).get("sha256"): record[key]
                      for key in ("file", "int8_file") if record.get(key)}
            graph = served.get(parameters.get("sidyp_graph_sha256"))
            if graph is None:
                problems.append(
                    f"{model}: serves graph sha256 {parameters.get('sidyp_graph_sha256')}, "
                    f"the bundle's {' or '.join(f'{v} is {k}' for k, v in served.items())}"
                )
            elif part == "encoder":
                self.precision = "int8" if graph == record.get("int8_file") else "fp32"
                if self.precision == "int8":
                    from .onnx_backend import OnnxBackend

                    self.reference = OnnxBackend.from_bundle(bundle, ["CPUExecutionProvider"],
                                                             "fp32")
            self.max_batch[model] = max(1, int(config.get("max_batch_size") or 1))
        self.encoder_outputs = list(graphs["encoder"]["outputs"])
        if problems:
            raise TritonError(
                f"Triton server {self.url} does not serve the models of bundle "
                f"{bundle.directory}:\n  " + "\n  ".join(problems)
                + "\nre-run `sidyp-prod export BUNDLE --triton-repo DIR` and reload the server"
            )

    # -- inference ----------------------------------------------------------------------------

    def _infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list:
        module = self._module()

        def call() -> list:
            tensors = []
            for name, value in inputs.items():
                tensor = module.InferInput(name, list(value.shape), DTYPES[value.dtype.name][0])
                tensor.set_data_from_numpy(value)
                tensors.append(tensor)
            requested = [module.InferRequestedOutput(n) for n in outputs]
            client = self._client()
            if self.address.protocol == "grpc":
                result = client.infer(model, tensors, outputs=requested,
                                      client_timeout=self.timeout)
            else:
                result = client.infer(model, tensors, outputs=requested)
            return [result.as_numpy(n) for n in outputs]

        return self._retrying(f"inference on {model}", call)

    def _batched(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list:
        """Split along the rows to the model's max_batch_size; parts go out concurrently."""
        rows = len(next(iter(inputs.values())))
        size = self.max_batch[model]
        parts = [
            {n: np.ascontiguousarray(v[start : start + size]) for n, v in inputs.items()}
            for start in range(0, rows, size)
        ]
        results = list(self._pool.map(lambda p: self._infer(model, p, outputs), parts))
        return [np.concatenate([r[k] for r in results]) for k in range(len(outputs))]

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> EncodedBatch:
        outputs = self._batched(
            ENCODER_MODEL,
            {"input_ids": input_ids.astype(np.int64), "attention_mask":
             attention_mask.astype(np.int64)},
            self.encoder_outputs,
        )
        return EncodedBatch.from_batch_first(*outputs)

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        (embedding,) = self._batched(
            EMBEDDER_MODEL,
            {"input_ids": input_ids.astype(np.int64), "attention_mask":
             attention_mask.astype(np.int64)},
            ["embedding"],
        )
        return embedding

    def reverse(
        self, noise: np.ndarray, conditioning: np.ndarray, y_given: np.ndarray
    ) -> np.ndarray:
        (logits,) = self._batched(
            DENOISER_MODEL,
            {"noise": noise.astype(np.float32), "conditioning": conditioning.astype(np.float32),
             "y_given": y_given.astype(np.float32)},
            ["logits"],
        )
        return logits

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def config_problems(config: dict, record: dict, model: str) -> list[str]:
    """Where a Triton model config's inputs/outputs differ from an ONNX graph's record."""
    problems = []
    for kind in ("inputs", "outputs"):
        served = {t["name"]: t for t in config.get(kind[:-1], [])}
        expected = record[kind]
        if set(served) != set(expected):
            problems.append(f"{model} {kind}: served {sorted(served)}, bundle {sorted(expected)}")
            continue
        for name, spec in expected.items():
            *shape, dtype = spec
            dims = triton_dims(shape)
            got = served[name]
            if got.get("data_type") != DTYPES[dtype][1]:
                problems.append(f"{model}.{name}: type {got.get('data_type')}, bundle {dtype}")
            if [int(d) for d in got.get("dims", [])] != dims:
                problems.append(f"{model}.{name}: dims {got.get('dims')}, bundle {dims}")
    return problems
