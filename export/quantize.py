"""int8 encoder graph whose outputs do not depend on the batch: per-row activation scales.

ONNX Runtime's dynamic quantization scales each MatMul's activations by one range per *tensor*,
so a row's result moves with the rows batched beside it. Here every weight MatMul of the fp32
graph is rewritten so that each token row of its input gets its own range:

    X = (q - zero_point) * scale = q * scale + offset     q uint8; scale, zero_point per row
    X @ W + b ~= (q @ Wq) * w_scale * scale + [x_kept, offset, 1] @ [W_kept; colsum(Wq w_scale); b]

with ``Wq`` int8 per output column, limited to 7 bits so that no CPU's kernel saturates. The
integer product is exact, so a row's output depends on that row only, on any x86 CPU.
A few input channels carry most of the range in BERT-like models (a known
"outlier dimension" effect); those channels, picked from calibration rows, skip the quantization
and go through a small fp32 MatMul, which halved the error on MiniLM (docs/experiments.md). The
same small MatMul adds the rows' offsets and the MatMul's bias (its Add folded in): one full-size
op where there were four (refine 1.06x on an AVX2 CPU, docs/benchmarks.md). The rows are
quantized by one QuantizeLinear and multiplied by ONNX Runtime's MatMulIntegerToFloat, which
applies the weight scales inside the kernel: the full-size elementwise ops left are the row
scale's Mul and the side product's Add. Weights are
rounded with GPTQ on the calibration rows' inputs rather than to the nearest step: 40-50% of
the labels that differed from fp32 on SemEval no longer do, at no cost when the graph runs.
Activation-by-activation MatMuls (attention scores) stay fp32.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Training rows that calibrate the int8 graph (its fp32 channels and GPTQ rounding).
CALIBRATION_ROWS = 256
# Channels per MatMul input kept in fp32: 4 of 384 (MiniLM); 8 measured no better.
FP32_CHANNELS = 4
# Weights in [-63, 63] (7 bits): x86 CPUs without AVX-512 VNNI multiply uint8 by int8 with
# VPMADDUBSW, which saturates a pair's sum at int16; 2 x 255 x 63 never does, so the integer
# product is exact on every CPU. Full-range weights (127) saturated on an AVX2 EPYC: mean
# |error| in probs 0.0082 instead of 0.0026, 6% of argmaxes changed (docs/experiments.md §17).
WEIGHT_LEVELS = 63
ACTIVATION_LEVELS = 255  # uint8 activations, a range per token row
GPTQ_BLOCK = 128  # input rows rounded between two updates of the rows after them


def calibration_sample(texts: Sequence[str]) -> list[str]:
    """Evenly spaced training texts (deterministic) for the int8 graph's calibration: the widest
    activation channels depend on the text the model sees."""
    step = max(1, len(texts) // CALIBRATION_ROWS)
    return list(texts[::step][:CALIBRATION_ROWS])


def _weight_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    weights = {i.name: i for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights
            and len(weights[n.input[1]].dims) == 2]


@dataclass
class Calibration:
    """What calibration rows say about every weight MatMul's input, by input name."""

    ranges: dict[str, np.ndarray]  # per channel, the largest |value|
    # X^T X over the token rows, for GPTQ's rounding; float32 halves what every input's matrix
    # holds at once (MiniLM's graph: 88 MB), its rounding is far below GPTQ's 1% damping.
    grams: dict[str, np.ndarray]


def calibrate(fp32_onnx: bytes, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Calibration:
    """Run the fp32 graph over ``batches`` of (input_ids, attention_mask) and gather, for every
    weight MatMul's input, its channels' ranges and its Gram matrix over the real (unmasked)
    tokens."""
    import onnxruntime as ort

    model = onnx.load_from_string(fp32_onnx)
    names = sorted({n.input[0] for n in _weight_matmuls(model)})
    for name in names:
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    # Unoptimised: fused kernels would hide the intermediate tensors.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    calibration = Calibration({}, {})
    for ids, mask in batches:
        values = session.run(names, {"input_ids": ids, "attention_mask": mask})
        real = mask.astype(bool)
        for name, value in zip(names, values, strict=True):
            # Token rows: the real ones only; other inputs (DeBERTa's relative positions) whole.
            token_rows = value.shape[:2] == real.shape
            rows = value[real] if token_rows else value.reshape(-1, value.shape[-1])
            widest = np.abs(rows).max(axis=0)
            calibration.ranges[name] = np.maximum(calibration.ranges.get(name, 0.0), widest)
            gram = rows.T @ rows
            if name in calibration.grams:
                calibration.grams[name] += gram
            else:
                calibration.grams[name] = gram
    return calibration


def gptq_weights(weight: np.ndarray, gram: np.ndarray, kept: Sequence[int],
                 w_scale: np.ndarray, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Round ``weight`` (in, out) to int8 steps of ``w_scale`` (per output column) the GPTQ
    way (Frantar et al., 2022): input rows one at a time, widest inputs first, each row's
    rounding error spread over the rows not yet rounded so that ``X @ W`` moves least for inputs
    whose Gram matrix is ``gram``. The ``kept`` rows (fp32 channels) come last and absorb what
    is left. Returns the int8 weights (kept rows 0) and the kept rows' fp32 weights."""
    n = weight.shape[0]
    h = gram.astype(np.float64).copy()
    dead = np.diag(h) == 0  # an input never seen: its weights cannot matter
    h[dead, dead] = 1.0
    kept_set = set(kept)
    rounded = [int(i) for i in np.argsort(-np.diag(h), kind="stable") if int(i) not in kept_set]
    order = np.array(rounded + list(kept), dtype=np.int64)
    h = h[np.ix_(order, order)]
    h[np.diag_indices(n)] += damp * np.mean(np.diag(h))  # GPTQ's damping keeps h invertible
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    w = weight.astype(np.float64)[order]
    w[dead[order] & (np.arange(n) < len(rounded))] = 0.0
    w_int8 = np.zeros(weight.shape, np.int8)
    # GPTQ's lazy batch updates: the rows after a block get its errors in one matrix product
    # instead of one outer product per row (the same result; 1.8x on a 1536 x 384 matrix).
    for start in range(0, len(rounded), GPTQ_BLOCK):
        end = min(start + GPTQ_BLOCK, len(rounded))
        errors = np.empty((end - start, w.shape[1]))
        for j in range(start, end):
            q = np.clip(np.round(w[j] / w_scale), -WEIGHT_LEVELS, WEIGHT_LEVELS)
            w_int8[rounded[j]] = q
            errors[j - start] = (w[j] - q * w_scale) / upper[j, j]
            w[j + 1:end] -= np.outer(upper[j, j + 1:end], errors[j - start])
        w[end:] -= upper[start:end, end:].T @ errors
    return w_int8, w[len(rounded):].astype(np.float32)


def fp32_channels(ranges: Mapping[str, np.ndarray], count: int = FP32_CHANNELS
                  ) -> dict[str, list[int]]:
    """The ``count`` widest channels of each MatMul input, sorted."""
    return {name: sorted(int(i) for i in np.argsort(-values, kind="stable")[:count])
            for name, values in ranges.items()}


def _other_input(add: onnx.NodeProto, name: str) -> str:
    return next(i for i in add.input if i != name)


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers by name, also under the outputs of Identity nodes that pass one on (the
    exporter shares equal initializers that way)."""
    constants = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    return constants


def _bias_adds(graph: onnx.GraphProto, targets: set[str],
               constants: Mapping[str, onnx.TensorProto]) -> dict[str, onnx.NodeProto]:
    """Per weight MatMul output, the Add of a (N,) constant that is its only consumer."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    found = {}
    for out in targets - outputs:
        users = consumers.get(out, [])
        if len(users) == 1 and users[0].op_type == "Add" and len(users[0].input) == 2:
            other = _other_input(users[0], out)
            if other in constants and len(constants[other].dims) == 1:
                found[out] = users[0]
    return found


def quantize_per_row(fp32_onnx: bytes, channels: Mapping[str, list[int]],
                     grams: Mapping[str, np.ndarray] | None = None) -> bytes:
    """The int8 graph of ``fp32_onnx``; ``channels``: per MatMul input, those kept in fp32
    (from :func:`fp32_channels`; inputs not named keep none). With ``grams`` (from
    :func:`calibrate`) weights are rounded by :func:`gptq_weights`, else to the nearest step."""
    model = onnx.load_from_string(fp32_onnx)
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    targets = {n.output[0] for n in _weight_matmuls(model)}
    inverse_levels = np.array(1 / ACTIVATION_LEVELS, np.float32)
    added = [numpy_helper.from_array(inverse_levels, "int8/inv_levels"),
             numpy_helper.from_array(np.array(1e-12, np.float32), "int8/tiny"),
             numpy_helper.from_array(np.array(0.0, np.float32), "int8/zero"),
             numpy_helper.from_array(np.array(1.0, np.float32), "int8/unit_scale"),
             numpy_helper.from_array(np.array([-1], np.int64), "int8/flat")]
    nodes: list[onnx.NodeProto] = []
    quantized: set[str] = set()

    def quantize_input(name: str, width: int) -> list[onnx.NodeProto]:
        p = f"{name}/int8/"
        steps, source = [], name
        kept = channels.get(name, [])
        added.append(numpy_helper.from_array(np.array([-1, width], np.int64), p + "rows_shape"))
        if kept:
            mask = np.ones(width, np.float32)
            mask[kept] = 0.0
            added.extend([numpy_helper.from_array(np.array(kept, np.int64), p + "kept"),
                          numpy_helper.from_array(mask, p + "mask")])
            steps += [helper.make_node("Gather", [name, p + "kept"], [p + "fp32"], axis=-1),
                      helper.make_node("Mul", [name, p + "mask"], [p + "rest"])]
            source = p + "rest"
        # Zero is in every row's range, so it is exactly representable (the zero point); the
        # scale and zero point per token row, applied by one QuantizeLinear over the rows
        # (per-axis on the flattened input): one vectorised op where Sub, Div, Round and Cast
        # ran over the whole tensor (with MatMulIntegerToFloat below: refine 1.17x on an AVX-512
        # CPU, docs/experiments.md §28).
        return [
            *steps,
            helper.make_node("ReduceMin", [source], [p + "row_min"], axes=[-1], keepdims=1),
            helper.make_node("ReduceMax", [source], [p + "row_max"], axes=[-1], keepdims=1),
            helper.make_node("Min", [p + "row_min", "int8/zero"], [p + "min"]),
            helper.make_node("Max", [p + "row_max", "int8/zero"], [p + "max"]),
            helper.make_node("Sub", [p + "max", p + "min"], [p + "range"]),
            helper.make_node("Mul", [p + "range", "int8/inv_levels"], [p + "raw_scale"]),
            helper.make_node("Max", [p + "raw_scale", "int8/tiny"], [p + "scale"]),
            helper.make_node("Div", [p + "min", p + "scale"], [p + "min_steps"]),
            helper.make_node("Round", [p + "min_steps"], [p + "neg_zero_point"]),
            # X = (q - zero_point) * scale = q * scale + offset
            helper.make_node("Mul", [p + "neg_zero_point", p + "scale"], [p + "offset"]),
            helper.make_node("Neg", [p + "neg_zero_point"], [p + "zero_point_float"]),
            helper.make_node("Cast", [p + "zero_point_float"], [p + "zero_point_rows"],
                             to=TensorProto.UINT8),
            helper.make_node("Reshape", [p + "zero_point_rows", "int8/flat"],
                             [p + "zero_point"]),
            helper.make_node("Reshape", [p + "scale", "int8/flat"], [p + "row_scales"]),
            helper.make_node("Shape", [source], [p + "shape"]),
            helper.make_node("Reshape", [source, p + "rows_shape"], [p + "rows"]),
            helper.make_node("QuantizeLinear", [p + "rows", p + "row_scales", p + "zero_point"],
                             [p + "q_rows"], axis=0),
            helper.make_node("Reshape", [p + "q_rows", p + "shape"], [p + "q"]),
        ]

    constants = _constants(graph)
    biases = _bias_adds(graph, targets, constants)
    folded = {add.output[0] for add in biases.values()}
    for node in graph.node:
        if node.op_type == "Add" and node.output[0] in folded:
            continue  # computed by its MatMul's side product below
        if node.op_type != "MatMul" or node.output[0] not in targets:
            nodes.append(node)
            continue
        x, w_name, out = node.input[0], node.input[1], node.output[0]
        weight = numpy_helper.to_array(initializers[w_name]).astype(np.float32)
        kept = channels.get(x, [])
        p, q = f"{x}/int8/", f"{out}/int8/"
        if x not in quantized:
            nodes += quantize_input(x, weight.shape[0])
            # [x_kept, offset, 1]: the side product's input, one per quantized input.
            side_inputs = ([p + "fp32"] if kept else []) + [p + "offset", p + "one"]
            nodes += [helper.make_node("Shape", [p + "offset"], [p + "offset_shape"]),
                      helper.make_node("ConstantOfShape", [p + "offset_shape"], [p + "one"],
                                       value=numpy_helper.from_array(np.ones(1, np.float32))),
                      helper.make_node("Concat", side_inputs, [p + "side_input"], axis=-1)]
            quantized.add(x)
        rest = weight.copy()
        rest[kept] = 0.0  # those input rows go through the side product
        w_scale = np.maximum(np.abs(rest).max(axis=0), 1e-12) / WEIGHT_LEVELS
        if grams is not None and x in grams:
            w_int8, kept_weight = gptq_weights(weight, grams[x], kept, w_scale)
        else:
            w_int8, kept_weight = np.round(rest / w_scale).astype(np.int8), weight[kept]
        colsum = (w_int8.astype(np.float32) * w_scale).sum(axis=0)
        bias_add = biases.get(out)
        bias = (np.zeros(weight.shape[1], np.float32) if bias_add is None else
                numpy_helper.to_array(constants[_other_input(bias_add, out)]))
        side = np.concatenate([kept_weight, colsum[None], bias[None].astype(np.float32)])
        w = f"{w_name}/int8/"
        added += [numpy_helper.from_array(w_int8, w + "q"),
                  numpy_helper.from_array(w_scale.astype(np.float32), w + "scale"),
                  numpy_helper.from_array(side.astype(np.float32), w + "side")]
        nodes += [
            # The integer product and its weight scales in one kernel (ONNX Runtime's contrib
            # op; its A scale is one number, so the row scales follow in a Mul).
            helper.make_node("MatMulIntegerToFloat",
                             [p + "q", w + "q", "int8/unit_scale", w + "scale"],
                             [q + "float"], domain="com.microsoft"),
            helper.make_node("Mul", [q + "float", p + "scale"], [q + "scaled"]),
            helper.make_node("MatMul", [p + "side_input", w + "side"], [q + "side"]),
            helper.make_node("Add", [q + "scaled", q + "side"],
                             [out if bias_add is None else bias_add.output[0]]),
        ]
    read = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
    # An Identity that passed a now-folded bias on is read by nothing: drop it and its constant.
    nodes = [n for n in nodes if n.op_type != "Identity" or n.output[0] in read]
    used = {name for n in nodes for name in n.input}
    del graph.node[:]
    graph.node.extend(nodes)
    for i in reversed(range(len(graph.initializer))):
        if graph.initializer[i].name not in used:  # the fp32 weights now quantized
            del graph.initializer[i]
    graph.initializer.extend(i for i in added if i.name in used)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.checker.check_model(model)
    return model.SerializeToString()
