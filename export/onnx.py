"""Export a bundle's encoder and denoiser to ONNX, then validate them against PyTorch.

Export and validation are separate steps (as in optimum): ``export_onnx`` writes the graphs and
records them in the manifest; ``validate_onnx`` runs both runtimes on the same inputs and reports
the largest absolute difference of every output.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidyp_prod.backends.torch_backend import TorchBackend
from sidyp_prod.bundle import (
    add_to_bundle,
    file_digest,
    load_bundle,
    sha256_file,
)
from sidyp_prod.graphs import (
    DENOISER_INPUTS,
    DENOISER_ONNX,
    DENOISER_OUTPUTS,
    EMBEDDER_ONNX,
    EMBEDDER_OUTPUTS,
    ENCODER_FP16_ONNX,
    ENCODER_INPUTS,
    ENCODER_INT8_ONNX,
    ENCODER_ONNX,
    ENCODER_OUTPUTS,
    GRAPH_VERSION,
    GRAPHS_JSON,
    INT8_SCHEME,
    OPSET,
    onnx_paths,
)
from sidyp_prod.model_io import embedding_width, load_bundle_tokenizer, load_model


def _to_onnx_bytes(
    module: torch.nn.Module, args: tuple, inputs: tuple, outputs: tuple, axes: dict
) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript-based exporter: no onnxscript needed, one self-contained file, and it
        # ran MiniLM faster in ONNX Runtime than the dynamo exporter's graph.
        torch.onnx.export(
            module, args, buffer, input_names=list(inputs), output_names=list(outputs),
            dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    return buffer.getvalue()


def encoder_onnx_bytes(encoder: torch.nn.Module, outputs: tuple[str, ...] = ENCODER_OUTPUTS
                       ) -> bytes:
    """Token ids and mask -> ``outputs`` (the encoder's, or the embedder's), batch first."""
    ids = torch.ones(2, 8, dtype=torch.long)
    mask = torch.ones(2, 8, dtype=torch.long)
    axes = {
        "input_ids": {0: "batch", 1: "tokens"},
        "attention_mask": {0: "batch", 1: "tokens"},
        **{name: {0: "batch"} for name in outputs},
    }
    return _to_onnx_bytes(encoder.eval(), (ids, mask), ENCODER_INPUTS, outputs, axes)


def denoiser_onnx_bytes(
    reverse: torch.nn.Module, steps: int, branches: int, classes: int, width: int
) -> bytes:
    rows = 3
    args = (
        torch.zeros(rows, steps, branches, classes),
        torch.zeros(rows, branches, width),
        torch.zeros(rows, classes),
    )
    axes = {"noise": {0: "rows"}, "conditioning": {0: "rows"}, "y_given": {0: "rows"},
            "logits": {0: "rows"}}
    return _to_onnx_bytes(reverse.eval(), args, DENOISER_INPUTS, DENOISER_OUTPUTS, axes)


def int8_encoder(fp32_onnx: bytes, tokenizer: Any, calibration_texts: Sequence[str] | None,
                 previous: dict | None) -> tuple[bytes, dict]:
    """The per-row int8 encoder (export/quantize.py) and its record (fp32 channels, weight
    rounding). With ``calibration_texts`` (train passes a sample of its rows) the channels and
    the GPTQ rounding come from them. Without, ``previous`` (an earlier export's record, with
    its graph's bytes where it is of the current scheme) decides: its graph is kept if it was
    made from this same fp32 graph, so that a re-export gives the same graph; else its channels
    (or those of SAMPLE_TEXTS) with nearest rounding."""
    from sidyp_prod.encoder import tokenize

    from .quantize import calibrate, fp32_channels, quantize_per_row

    previous = previous or {}
    fp32_sha256 = hashlib.sha256(fp32_onnx).hexdigest()
    if not calibration_texts and "bytes" in previous and previous["fp32_sha256"] == fp32_sha256:
        return previous["bytes"], {key: previous[key] for key in INT8_RECORD}
    channels, grams = previous.get("int8_fp32_channels"), None
    if calibration_texts or not channels:
        texts = list(calibration_texts or SAMPLE_TEXTS)
        batches = (tokenize(tokenizer, texts[i:i + 32]) for i in range(0, len(texts), 32))
        calibration = calibrate(fp32_onnx, batches)
        channels = fp32_channels(calibration.ranges)
        # A few sample sentences are too few tokens for GPTQ's Gram matrices.
        grams = calibration.grams if calibration_texts else None
    record = {"int8_fp32_channels": channels,
              "int8_rounding": "nearest" if grams is None else "gptq"}
    return quantize_per_row(fp32_onnx, channels, grams), record


# What the manifest records about the int8 graph besides its file and scheme.
INT8_RECORD = ("int8_fp32_channels", "int8_rounding")


def _previous_int8(bundle: Any) -> dict:
    """The bundle's int8 record, with the graph's bytes and its fp32 graph's sha256 where the
    graph is of the current scheme and layout (``load_bundle`` has checked both files' hashes)."""
    record = (bundle.manifest.get("onnx") or {}).get("encoder") or {}
    previous = {key: record[key] for key in INT8_RECORD if key in record}
    previous.setdefault("int8_rounding", "nearest")  # exports before GPTQ rounding
    int8_file, fp32_file = record.get("int8_file"), record.get("file")
    if (record.get("int8_scheme") != INT8_SCHEME
            or bundle.manifest["onnx"].get("graph_version") != GRAPH_VERSION
            or int8_file not in bundle.files or fp32_file not in bundle.files):
        return previous
    previous["bytes"] = bundle.path(int8_file).read_bytes()
    previous["fp32_sha256"] = bundle.files[fp32_file]["sha256"]
    return previous


def fp16_encoder(fp32_onnx: bytes) -> bytes:
    """The encoder in float16 for the CUDA provider, inputs and outputs as in fp32. LayerNorm
    stays fp32 (its variance in fp16 loses the small differences it normalises)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load_from_string(fp32_onnx), keep_io_types=True,
                                     op_block_list=["LayerNormalization"])
    return model.SerializeToString()


def export_onnx(
    bundle_dir: str | Path, out_dir: str | Path | None = None, int8: bool = True,
    calibration_texts: Sequence[str] | None = None, fp16: bool = False,
) -> dict:
    """Write ``encoder.onnx``, ``denoiser.onnx`` (and ``encoder.int8.onnx`` with ``int8``,
    ``encoder.fp16.onnx`` with ``fp16``) into the bundle and record them (names, shapes,
    hashes) in its manifest; or, with ``out_dir``, into that directory with the same record in
    ``onnx.json``. Returns the record.
    ``calibration_texts`` pick the int8 graph's fp32 channels (see int8_encoder)."""
    bundle = load_bundle(bundle_dir)
    torch_backend = TorchBackend.from_bundle(bundle)
    manifest = bundle.manifest
    branches, classes = manifest["branches"], len(manifest["labels"])
    config = manifest["config"]
    width, steps = config["denoiser_width"], config["inference_steps"]
    embedder = torch_backend.embedder
    # With a separate embedding model the encoder graph has no embedding output.
    encoder_outputs = ENCODER_OUTPUTS if embedder is None else ENCODER_OUTPUTS[:2]
    files = {
        ENCODER_ONNX: encoder_onnx_bytes(torch_backend.encoder, encoder_outputs),
        DENOISER_ONNX: denoiser_onnx_bytes(
            torch_backend.reverse_process, steps, branches, classes, width
        ),
    }
    int8_record = dict.fromkeys(INT8_RECORD)
    if int8:
        files[ENCODER_INT8_ONNX], int8_record = int8_encoder(
            files[ENCODER_ONNX], load_bundle_tokenizer(bundle), calibration_texts,
            _previous_int8(bundle))
    if fp16:
        files[ENCODER_FP16_ONNX] = fp16_encoder(files[ENCODER_ONNX])
    token_inputs = {"input_ids": ["batch", "tokens", "int64"],
                    "attention_mask": ["batch", "tokens", "int64"]}
    embedding = {"embedding": ["batch", embedding_width(manifest), "float32"]}
    graphs = {
        "opset": OPSET,
        "graph_version": GRAPH_VERSION,
        "encoder": {
            "file": ENCODER_ONNX,
            "int8_file": ENCODER_INT8_ONNX if int8 else None,
            # Per-row activation ranges: a row's int8 outputs do not depend on its batch.
            "int8_scheme": INT8_SCHEME if int8 else None,
            **int8_record,
            "fp16_file": ENCODER_FP16_ONNX if fp16 else None,
            "inputs": token_inputs,
            "outputs": {"probs": ["batch", branches, classes, "float32"],
                        "conditioning": ["batch", branches, width, "float32"],
                        **(embedding if embedder is None else {})},
        },
        "denoiser": {
            "file": DENOISER_ONNX,
            "inputs": {"noise": ["rows", steps, branches, classes, "float32"],
                       "conditioning": ["rows", branches, width, "float32"],
                       "y_given": ["rows", classes, "float32"]},
            "outputs": {"logits": ["rows", branches, classes, "float32"]},
        },
    }
    if embedder is not None:
        files[EMBEDDER_ONNX] = encoder_onnx_bytes(embedder, EMBEDDER_OUTPUTS)
        graphs["embedder"] = {"file": EMBEDDER_ONNX, "inputs": token_inputs, "outputs": embedding}
    if out_dir is None:
        return add_to_bundle(bundle, files, {"onnx": graphs}).manifest["onnx"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    graphs["bundle_digest"] = file_digest(bundle)
    graphs["sha256"] = {name: sha256_file(out / name) for name in files}
    (out / GRAPHS_JSON).write_text(json.dumps(graphs, indent=2) + "\n")
    return graphs


@dataclass
class ValidationReport:
    atol: float
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    informational: dict[str, float] = field(default_factory=dict)  # int8, fp16: not gated
    signature_problems: list[str] = field(default_factory=list)
    labels_compared: int = 0
    labels_differing: int = 0

    @property
    def ok(self) -> bool:
        return (
            all(v <= self.atol for v in self.max_abs_diff.values())
            and not self.signature_problems
            and self.labels_differing == 0
        )

    def to_text(self) -> str:
        lines = [f"{'output':<32}{'max |onnx - torch|':>20}  within atol={self.atol:g}"]
        for name, diff in self.max_abs_diff.items():
            lines.append(f"{name:<32}{diff:>20.3e}  {'yes' if diff <= self.atol else 'NO'}")
        for name, diff in self.informational.items():
            lines.append(f"{name:<32}{diff:>20.3e}  (quantized: not gated)")
        lines += [f"signature: {problem}" for problem in self.signature_problems]
        lines.append(
            f"refined labels: {self.labels_compared - self.labels_differing}/"
            f"{self.labels_compared} equal"
        )
        return "\n".join(lines)


SAMPLE_TEXTS = (
    "a short one",
    "A somewhat longer sentence, so that the batch carries padding on the other rows.",
    "the third",
    "Markets rallied after the announcement, with shares of the company up four percent.",
    "ok",
    "The team scored twice in the second half and held on to win the final.",
    "Researchers describe a new method for measuring the age of distant stars.",
    "Is this the one?",
)


def signature_problems(session, record: dict, graph: str) -> list[str]:
    """Where an ONNX Runtime session's inputs/outputs differ from the manifest's record
    (names, element types, ranks, fixed dims)."""
    problems = []
    for kind, args in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        expected = record[kind]
        names = [a.name for a in args]
        if names != list(expected):
            problems.append(f"{graph} {kind}: graph has {names}, record says {list(expected)}")
            continue
        for arg in args:
            *dims, dtype = expected[arg.name]
            if arg.type != f"tensor({'float' if dtype == 'float32' else dtype})":
                problems.append(f"{graph}.{arg.name}: type {arg.type}, record says {dtype}")
            fixed = [d if isinstance(d, int) else None for d in dims]
            actual = [d if isinstance(d, int) else None for d in arg.shape]
            if fixed != actual:
                problems.append(f"{graph}.{arg.name}: shape {arg.shape}, record says {dims}")
    return problems


def validate_onnx(
    bundle_dir: str | Path,
    texts: list[str] | None = None,
    atol: float = 1e-4,
    onnx_dir: str | Path | None = None,
    batch_sizes: tuple[int, ...] = (1, 3, 8),
) -> ValidationReport:
    """Run the exported graphs and the PyTorch models on the same inputs and report: the graphs'
    signatures against the manifest, the largest |difference| of every output over several batch
    sizes and sequence lengths, and whether the refined labels of a sample agree."""
    from sidyp_prod.backends.onnx_backend import OnnxBackend
    from sidyp_prod.corpus import Row
    from sidyp_prod.encoder import tokenize
    from sidyp_prod.pipeline import refine_rows

    bundle = load_bundle(bundle_dir)
    model = load_model(bundle)
    graphs, directory = onnx_paths(bundle, onnx_dir)
    cpu = ["CPUExecutionProvider"]
    denoiser_path = str(directory / graphs["denoiser"]["file"])
    embedder_path = str(directory / graphs["embedder"]["file"]) if "embedder" in graphs else None
    onnx = OnnxBackend(str(directory / graphs["encoder"]["file"]), denoiser_path, cpu,
                       embedder_path=embedder_path)
    torch_backend = TorchBackend.from_bundle(bundle)
    report = ValidationReport(atol)
    report.signature_problems += signature_problems(onnx.encoder, graphs["encoder"], "encoder")
    report.signature_problems += signature_problems(onnx.denoiser, graphs["denoiser"], "denoiser")
    if onnx.embedder is not None:
        report.signature_problems += signature_problems(onnx.embedder, graphs["embedder"],
                                                        "embedder")
    texts = list(texts or SAMPLE_TEXTS)
    # The reduced-precision encoders: their differences are reported, not gated.
    reduced = {key.split("_")[0]: OnnxBackend(str(directory / graphs["encoder"][key]),
                                              denoiser_path, cpu)
               for key in ("int8_file", "fp16_file") if graphs["encoder"].get(key)}
    encoder_outputs = [n for n in ENCODER_OUTPUTS if n in graphs["encoder"]["outputs"]]

    def record(name: str, diff: float, into: dict[str, float]) -> None:
        into[name] = max(into.get(name, 0.0), diff)

    rng = np.random.default_rng(0)
    for size in batch_sizes:
        batch = [texts[i % len(texts)] for i in range(size)]
        ids, mask = tokenize(model.tokenizer, batch)
        ours, ref = onnx.encode(ids, mask), torch_backend.encode(ids, mask)
        for name in encoder_outputs:
            diff = float(np.abs(getattr(ours, name) - getattr(ref, name)).max())
            record(f"encoder.{name}", diff, report.max_abs_diff)
        for precision, backend in reduced.items():
            approximate = backend.encode(ids, mask)
            for name in ("probs", "embedding"):
                if name in encoder_outputs:
                    diff = float(np.abs(getattr(approximate, name) - getattr(ref, name)).max())
                    record(f"{precision}.{name}", diff, report.informational)
        if model.embedding_tokenizer is not None:
            ids, mask = tokenize(model.embedding_tokenizer, batch)
            diff = float(np.abs(onnx.embed(ids, mask) - torch_backend.embed(ids, mask)).max())
            record("embedder.embedding", diff, report.max_abs_diff)
        m, b, c = ref.probs.shape
        steps = model.config.inference_steps
        noise = rng.standard_normal((b, steps, m, c)).astype(np.float32)
        y = rng.standard_normal((b, c)).astype(np.float32)
        conditioning = ref.conditioning.transpose(1, 0, 2)
        diff = float(np.abs(onnx.reverse(noise, conditioning, y)
                            - torch_backend.reverse(noise, conditioning, y)).max())
        record("denoiser.logits", diff, report.max_abs_diff)

    rows = [Row(i + 1, {"text": t}, i + 1, t, model.labels[i % len(model.labels)])
            for i, t in enumerate(texts)]
    ours_rows = refine_rows(rows, model, onnx)
    ref_rows = refine_rows(rows, model, torch_backend)
    report.labels_compared = len(rows)
    report.labels_differing = sum(
        a["predicted_label"] != b["predicted_label"]
        for a, b in zip(ours_rows, ref_rows, strict=True)
    )
    return report
