"""Write a Triton Inference Server model repository for an exported bundle.

Five models (six with a separate embedding model), each in ``DIR/<name>/`` with
``config.pbtxt`` and a version folder ``1/``:

- ``sidyp_encoder``: ``encoder.onnx`` (token ids -> probs, conditioning, embedding);
- ``sidyp_denoiser``: ``denoiser.onnx`` (the whole reverse process of a batch of chains);
- ``sidyp_embedder``: ``embedder.onnx``, for a bundle trained with ``--embedding-model``
  (its own token ids -> embedding; the encoder graph then has no embedding output);
- ``sidyp_tokenizer`` (python backend: text -> the encoder's token ids) and ``sidyp_encode``, an
  ensemble of it and ``sidyp_encoder``: text in, the encoder's outputs out;
- ``sidyp_refine``: a python-backend BLS model, raw text and the LLM's label in, refined label,
  confidence and label score out. It holds the bundle's reference set (faiss) and calls the other
  two models through the server, so an online caller needs nothing but a Triton client. Beside
  it, ``encoder.fp32.onnx``: where its configuration says the server runs the int8 encoder
  (``encoder_precision``), the close calls are encoded again with it, as in-process refine does.

The ONNX models come in four configurations of the same files, picked per server with
``tritonserver --model-config-name NAME`` (a model without ``configs/NAME.pbtxt`` keeps
``config.pbtxt``):

- ``config.pbtxt``: ``backend: "onnxruntime"`` on ``KIND_GPU``, for NVIDIA's server images;
- ``configs/cpu.pbtxt``: the same on ``KIND_CPU``, for NVIDIA's images on machines without GPUs,
  with the per-row int8 encoder (``model.int8.onnx``), as in-process ``refine`` runs on a CPU;
- ``configs/tensorrt.pbtxt``: the same with ONNX Runtime's TensorRT accelerator in FP16 (opt-in);
- ``configs/python.pbtxt``: ``backend: "python"`` running the ONNX file in onnxruntime, for
  servers without the onnxruntime backend (the tritonserver binary of the nvidia-pytriton wheel,
  which ``sidyp-prod serve`` runs); the encoder's int8 graph too.

Every ONNX model's config carries the graph's sha256 and the bundle digest as parameters, so a
client can check that the server runs the models of its bundle.
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path

from sidyp_prod.backends.onnx_backend import available_cores
from sidyp_prod.backends.triton_backend import DTYPES, triton_dims
from sidyp_prod.bundle import Bundle, file_digest, load_bundle
from sidyp_prod.graphs import (
    EMBEDDER_MODEL,
    ENCODE_ENSEMBLE,
    ENCODER_INPUTS,
    ENCODER_MODEL,
    GRAPH_MODELS,
    INT8_SCHEME,
    REFERENCE_ENCODER_FILE,
    TOKENIZER_MODEL,
    onnx_paths,
)
from sidyp_prod.model_io import TOKENIZER_FILE

REFINE_MODEL = "sidyp_refine"
DEFAULT_REPOSITORY = "triton_models"
CONFIG_NAMES = ("python", "cpu", "tensorrt")  # configs/NAME.pbtxt besides config.pbtxt
LABELS_FILE = "labels.txt"
INT8_MODEL_FILE = "model.int8.onnx"  # the encoder's CPU configurations serve this graph
# Requests queue this long for the dynamic batcher to merge them; small, the callers batch too.
QUEUE_DELAY_US = 2000
# Chains per denoiser request: B rows x (C + n_s) chains go through the reverse process.
DENOISER_MAX_BATCH = 4096


def _tensor(name: str, spec: list, label_file: bool = False) -> str:
    *shape, dtype = spec
    dims = ", ".join(str(d) for d in triton_dims(shape))
    label = f' label_filename: "{LABELS_FILE}"' if label_file else ""
    return f'  {{ name: "{name}" data_type: {DTYPES[dtype][1]} dims: [ {dims} ]{label} }}'


def _parameters(values: dict[str, str]) -> str:
    return "\n".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in values.items()
    )


def model_config(
    name: str,
    record: dict,
    max_batch_size: int,
    flavour: str,
    parameters: dict[str, str],
    labelled_outputs: tuple[str, ...] = (),
    cpu_instances: int = 1,
) -> str:
    """config.pbtxt text of one ONNX model. ``flavour``: onnxruntime (GPU), cpu (onnxruntime on
    CPU), tensorrt (GPU, TensorRT FP16) or python (onnxruntime inside the python backend).
    The CPU flavours run ``cpu_instances`` instances; with more than one, each runs one
    intra-op thread (batches side by side, as in-process ``refine`` runs them on a CPU)."""
    inputs = ",\n".join(_tensor(n, s) for n, s in record["inputs"].items())
    outputs = ",\n".join(
        _tensor(n, s, n in labelled_outputs) for n, s in record["outputs"].items()
    )
    if flavour in ("python", "cpu"):
        # The python backend runs onnxruntime on the CPU of the server's host; both read
        # intra_op_thread_count (0: ONNX Runtime's default, every core).
        backend = ('backend: "python"' if flavour == "python" else
                   f'backend: "onnxruntime"\ndefault_model_filename: "{parameters["onnx_file"]}"')
        instances = f"instance_group [ {{ kind: KIND_CPU count: {cpu_instances} }} ]"
        parameters = {**parameters, "intra_op_thread_count": "1" if cpu_instances > 1 else "0"}
    else:
        backend = 'backend: "onnxruntime"\ndefault_model_filename: "model.onnx"'
        instances = "instance_group [ { kind: KIND_GPU count: 1 } ]"
    lines = [
        f'name: "{name}"',
        backend,
        f"max_batch_size: {max_batch_size}",
        f"input [\n{inputs}\n]",
        f"output [\n{outputs}\n]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}",
        instances,
        _parameters(parameters),
    ]
    if flavour == "tensorrt":
        lines.append(
            "optimization { execution_accelerators { gpu_execution_accelerator [ {\n"
            '  name: "tensorrt"\n'
            '  parameters { key: "precision_mode" value: "FP16" }\n'
            '  parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
            "} ] } }"
        )
    return "\n".join(lines) + "\n"


def refine_config(max_batch_size: int, parameters: dict[str, str]) -> str:
    """The BLS model: strings in, the refined label and its scores out."""
    return "\n".join([
        f'name: "{REFINE_MODEL}"',
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        "input [",
        '  { name: "text" data_type: TYPE_STRING dims: [ 1 ] },',
        '  { name: "label" data_type: TYPE_STRING dims: [ 1 ] optional: true }',
        "]",
        "output [",
        '  { name: "predicted_label" data_type: TYPE_STRING dims: [ 1 ] },',
        '  { name: "confidence" data_type: TYPE_FP32 dims: [ 1 ] },',
        '  { name: "label_score" data_type: TYPE_FP32 dims: [ 1 ] },',
        '  { name: "is_label_issue" data_type: TYPE_BOOL dims: [ 1 ] }',
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}",
        "instance_group [ { kind: KIND_CPU count: 1 } ]",
        _parameters(parameters),
    ]) + "\n"


def tokenizer_config(max_batch_size: int, max_length: int, pad_token: str) -> str:
    """The python model that turns text into the encoder's token ids. No dynamic batching:
    each request is padded on its own, to the width refine pads its rows to."""
    ids = ",\n".join(f'  {{ name: "{n}" data_type: TYPE_INT64 dims: [ -1 ] }}'
                     for n in ENCODER_INPUTS)
    return "\n".join([
        f'name: "{TOKENIZER_MODEL}"',
        'backend: "python"',
        f"max_batch_size: {max_batch_size}",
        'input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]',
        f"output [\n{ids}\n]",
        "instance_group [ { kind: KIND_CPU count: 1 } ]",
        _parameters({"max_length": str(max_length), "pad_token": pad_token}),
    ]) + "\n"


def encode_ensemble_config(max_batch_size: int, encoder_record: dict) -> str:
    """text -> sidyp_tokenizer -> sidyp_encoder -> the encoder's outputs, as one model."""
    outputs = ",\n".join(_tensor(n, s) for n, s in encoder_record["outputs"].items())

    def maps(kind: str, names: list[str]) -> str:
        return " ".join(f'{kind} {{ key: "{n}" value: "{n}" }}' for n in names)

    ids = list(ENCODER_INPUTS)
    return "\n".join([
        f'name: "{ENCODE_ENSEMBLE}"',
        'platform: "ensemble"',
        f"max_batch_size: {max_batch_size}",
        'input [ { name: "text" data_type: TYPE_STRING dims: [ 1 ] } ]',
        f"output [\n{outputs}\n]",
        "ensemble_scheduling { step [",
        f'  {{ model_name: "{TOKENIZER_MODEL}" model_version: -1',
        f'    {maps("input_map", ["text"])} {maps("output_map", ids)} }},',
        f'  {{ model_name: "{ENCODER_MODEL}" model_version: -1',
        f'    {maps("input_map", ids)} {maps("output_map", list(encoder_record["outputs"]))} }}',
        "] }",
    ]) + "\n"


def _link_or_copy(src: str, dst: str) -> str:
    """Hard links keep a repository next to its bundle from doubling the disk it takes."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _template(name: str) -> str:
    return resources.files("sidyp_prod.triton_models").joinpath(name).read_text()


def write_triton_repository(
    bundle_dir: str | Path,
    repository: str | Path = DEFAULT_REPOSITORY,
    onnx_dir: str | Path | None = None,
    cpu_instances: int | None = None,
) -> Path:
    """Write (replace) the models of ``bundle_dir`` in ``repository``; returns its path.
    ``cpu_instances``: instances of each ONNX model in the CPU configurations (default: the
    cores this process may use, meant for a server on a host like this one)."""
    if cpu_instances is None:
        cpu_instances = available_cores()
    if cpu_instances < 1:
        raise ValueError(f"cpu_instances must be at least 1, got {cpu_instances}")
    bundle = load_bundle(bundle_dir)
    graphs, directory = onnx_paths(bundle, onnx_dir)
    repository = Path(repository)
    repository.mkdir(parents=True, exist_ok=True)
    labels = "\n".join(bundle.manifest["labels"]) + "\n"
    digest = file_digest(bundle)
    batch = int(bundle.manifest["config"]["encode_batch_size"])
    parts = [part for part in GRAPH_MODELS if part in graphs]
    hashes = _graph_hashes(bundle, graphs, directory, parts)
    if "embedder" not in parts:  # a separate embedding model of an earlier export
        shutil.rmtree(repository / EMBEDDER_MODEL, ignore_errors=True)
    for part in parts:
        model = GRAPH_MODELS[part]
        max_batch = DENOISER_MAX_BATCH if part == "denoiser" else batch
        root = repository / model
        if root.exists():
            shutil.rmtree(root)
        (root / "1").mkdir(parents=True)
        (root / "configs").mkdir()
        _link_or_copy(str(directory / graphs[part]["file"]), str(root / "1" / "model.onnx"))
        # CPU servers run the per-row int8 encoder, as in-process refine does on a CPU.
        cpu_file, cpu_hash = "model.onnx", hashes[part]
        if part == "encoder" and graphs[part].get("int8_scheme") == INT8_SCHEME:
            cpu_file, cpu_hash = INT8_MODEL_FILE, hashes["encoder.int8"]
            _link_or_copy(str(directory / graphs[part]["int8_file"]), str(root / "1" / cpu_file))
        (root / "1" / "model.py").write_text(_template("onnx_model.py"))
        (root / LABELS_FILE).write_text(labels)
        common = {"sidyp_bundle_digest": digest,
                  "sidyp_graph_version": str(graphs["graph_version"])}
        labelled = {"encoder": ("probs",), "denoiser": ("logits",)}.get(part, ())
        configs = {"onnxruntime": root / "config.pbtxt"}
        configs.update({name: root / "configs" / f"{name}.pbtxt" for name in CONFIG_NAMES})
        for flavour, path in configs.items():
            on_cpu = flavour in ("cpu", "python")
            params = {**common, "sidyp_graph_sha256": cpu_hash if on_cpu else hashes[part],
                      "onnx_file": cpu_file if on_cpu else "model.onnx"}
            path.write_text(model_config(model, graphs[part], max_batch, flavour, params,
                                         labelled, cpu_instances))
    # The tokenizer and the text -> encoder ensemble.
    config = bundle.manifest["config"]
    for name in (TOKENIZER_MODEL, ENCODE_ENSEMBLE):
        shutil.rmtree(repository / name, ignore_errors=True)
        (repository / name / "1").mkdir(parents=True)
    root = repository / TOKENIZER_MODEL
    (root / "1" / "model.py").write_text(_template("tokenizer_model.py"))
    _link_or_copy(str(bundle.path(TOKENIZER_FILE)), str(root / "1" / "tokenizer.json"))
    (root / "config.pbtxt").write_text(tokenizer_config(
        batch, int(config["max_length"]), bundle.manifest["encoder"].get("pad_token", "[PAD]")))
    (repository / ENCODE_ENSEMBLE / "config.pbtxt").write_text(
        encode_ensemble_config(batch, graphs["encoder"]))

    root = repository / REFINE_MODEL
    if root.exists():
        shutil.rmtree(root)
    (root / "1").mkdir(parents=True)
    (root / "1" / "model.py").write_text(_template("refine_model.py"))
    shutil.copytree(bundle.directory, root / "1" / "bundle", copy_function=_link_or_copy)
    params = {"sidyp_bundle_digest": digest, "denoiser_max_batch_size": str(DENOISER_MAX_BATCH)}
    int8 = graphs["encoder"].get("int8_scheme") == INT8_SCHEME
    if int8:
        # Where the server runs the int8 encoder, close calls are encoded again with this graph
        # (pipeline.CLOSE_CALL), as in-process refine does.
        _link_or_copy(str(directory / graphs["encoder"]["file"]),
                      str(root / "1" / REFERENCE_ENCODER_FILE))
    (root / "configs").mkdir()
    (root / "config.pbtxt").write_text(refine_config(batch, {**params,
                                                             "encoder_precision": "fp32"}))
    for name in CONFIG_NAMES:
        precision = "int8" if int8 and name in ("cpu", "python") else "fp32"
        (root / "configs" / f"{name}.pbtxt").write_text(
            refine_config(batch, {**params, "encoder_precision": precision}))
    return repository


def _graph_hashes(bundle: Bundle, graphs: dict, directory: Path, parts: list[str]
                  ) -> dict[str, str]:
    """sha256 of each part's graph, and of the int8 encoder as "encoder.int8"."""
    files = {part: graphs[part]["file"] for part in parts}
    if graphs["encoder"].get("int8_file"):
        files["encoder.int8"] = graphs["encoder"]["int8_file"]
    if directory == bundle.directory:
        return {key: bundle.files[name]["sha256"] for key, name in files.items()}
    return {key: graphs["sha256"][name] for key, name in files.items()}
