"""``refine --engine ray``: refinement as a Ray Data pipeline, a thin adapter over the core.

Stages: read raw lines (:class:`JsonlLines`) -> parse, validate and tokenize on CPU tasks
(``corpus.parse_line``, the tokenizer of the bundle) -> an actor pool whose actors load the bundle
once (ONNX Runtime sessions or any ``load_backend`` back end, the faiss reference set, the
denoiser) and call ``pipeline.refine_rows``, the function the single-process ``refine`` calls
-> write one shard (and its rejects shard) per batch -> a JSON manifest (with the rows each
node's actors refined, so a cluster run shows where the work went).

Exactly-once output: Ray restarts a killed actor and retries its task on the same input block, so
a shard is named after its first (file, line) and written atomically; a retried write replaces
the same file with the same rows. The driver then checks, from the line ranges each shard reports,
that every line of every file was written once and that each file was read to its end, deletes
files that no reported shard owns (left by an attempt Ray gave up on), writes the manifest and
only then renames the staging directory to DIR: a DIR that exists is complete.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data.datasource import FileBasedDatasource

from ..api import DEFAULT_FIELDS, RefineSummary
from ..backends import load_backend
from ..bundle import file_digest, load_bundle
from ..corpus import FieldNames, InputError, Reject, Row, json_line, parse_line, strip_line_end
from ..encoder import tokenize, unpadded_ids
from ..formats import jsonl_to_parquet
from ..model_io import load_bundle_tokenizer, load_model
from ..pipeline import refine_rows

LINES_PER_BLOCK = 4096
MANIFEST = "manifest.json"
FORMATS = ("jsonl", "parquet")
_READ_BYTES = 1 << 20
_GLOB_CHARS = set("*?[")


class AccountingError(RuntimeError):
    """Input rows != output rows + rejected rows, or a line was written twice or never."""


class JsonlLines(FileBasedDatasource):
    """Raw lines of JSONL files with their path, line number and an end-of-file flag.

    Why not ``ray.data.read_json(lines=True)``: pyarrow's JSON reader fails a whole file on one
    malformed line (or, told to, drops it silently), forgets line numbers, and forces every
    record into one Arrow schema (an ``id`` that is an integer on one line and a string on the
    next fails; key order and nested values are not kept), so outputs could not equal the
    single-process refine. Why not ``read_text``: it decodes a whole file as UTF-8 at once (one
    bad byte fails the file) and numbers no lines. This reader keeps what Ray's readers give
    (path listing, filesystems, ``.gz`` inferred from the name, read parallelism and retries),
    streams each file in blocks of ``LINES_PER_BLOCK`` lines, and leaves parsing to
    ``corpus.parse_line``, the single-process validation: a bad line becomes a reject naming its
    file and line, never a lost row.
    """

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        pending: list[bytes] = []
        first = 1
        for line in _split_lines(f):
            pending.append(line)
            # One line is held back so that the file's last line can be flagged as such.
            if len(pending) > LINES_PER_BLOCK:
                yield _line_block(path, first, pending[:-1], ends_file=False)
                first += len(pending) - 1
                pending = pending[-1:]
        if pending:
            yield _line_block(path, first, pending, ends_file=True)


def _split_lines(stream: pa.NativeFile) -> Iterator[bytes]:
    """Lines split as ``corpus.iter_corpus`` splits them (a final line without ``\\n`` counts)."""
    rest = b""
    while chunk := stream.read(_READ_BYTES):
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for part in parts:
            yield strip_line_end(part)
    if rest:
        yield strip_line_end(rest)


def _line_block(path: str, first: int, lines: list[bytes], ends_file: bool) -> pa.Table:
    n = len(lines)
    return pa.table({
        "path": pa.array([path] * n, pa.string()),
        "line": pa.array(range(first, first + n), pa.int64()),
        "data": pa.array(lines, pa.binary()),
        "last": pa.array([False] * (n - 1) + [ends_file], pa.bool_()),
    })


def _reject_line(path: str, reject: Reject) -> str:
    """A rejects line: the single-process one plus the file it came from."""
    return json_line({"file": path, **reject.to_json()})


def _parse(batch: pa.Table, fields: FieldNames, labels: frozenset[str]) -> list[Row | Reject]:
    lines = batch.column("line").to_pylist()
    data = batch.column("data").to_pylist()
    return [parse_line(n, d, fields, labels) for n, d in zip(lines, data, strict=True)]


def parse_and_tokenize(
    batch: pa.Table, tokenizer: Any, fields: FieldNames, labels: list[str], strict: bool
) -> pa.Table:
    """CPU stage: validate every line and tokenize the good ones, so the model actors (GPU ones
    on a cluster) spend their time on the model. Adds ``tokens`` (unpadded ids, null for a
    reject) and ``reject`` (the rejects line, null for a row)."""
    paths = batch.column("path").to_pylist()
    items = _parse(batch, fields, frozenset(labels))
    good = [i for i, item in enumerate(items) if isinstance(item, Row)]
    tokens: list[list[int] | None] = [None] * len(items)
    if good:
        ids, mask = tokenize(tokenizer, [items[i].text for i in good])  # type: ignore[union-attr]
        for i, row_ids in zip(good, unpadded_ids(ids, mask), strict=True):
            tokens[i] = row_ids.tolist()
    rejects: list[str | None] = [None] * len(items)
    for i, item in enumerate(items):
        if isinstance(item, Reject):
            if strict:
                raise InputError(paths[i], item.line_no, item.field, item.reason)
            rejects[i] = _reject_line(paths[i], item)
    return (batch.append_column("tokens", pa.array(tokens, pa.list_(pa.int32())))
            .append_column("reject", pa.array(rejects, pa.string())))


class RefineWorker:
    """One actor: loads the bundle once and refines batches with ``pipeline.refine_rows``.

    The back end comes from ``load_backend(bundle, backend, precision=..., **backend_options)``,
    so any back end that function knows (``onnx``, ``torch``, a Triton client given its URL)
    runs here unchanged.
    """

    def __init__(self, bundle_dir: str, backend: str, precision: str,
                 backend_options: dict[str, Any], fields: FieldNames, threads: int = 0) -> None:
        bundle = load_bundle(bundle_dir)
        self.model = load_model(bundle)
        self.backend = load_backend(bundle, backend, precision=precision, threads=threads,
                                    **backend_options)
        self.fields = fields
        self.labels = frozenset(self.model.labels)
        # The node this actor runs on: the manifest counts the rows each node refined.
        inside = ray.is_initialized()
        self.node = ray.get_runtime_context().get_node_id() if inside else ""
        self.node_ip = ray.util.get_node_ip_address() if inside else ""

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = _parse(batch, self.fields, self.labels)
        tokens = batch.column("tokens").to_pylist()
        good = [i for i, item in enumerate(items) if isinstance(item, Row)]
        records = refine_rows(
            [items[i] for i in good],  # type: ignore[misc]
            self.model,
            self.backend,
            [np.asarray(tokens[i], dtype=np.int64) for i in good],
        )
        out: list[str] = batch.column("reject").to_pylist()
        changed = [False] * len(items)
        for i, record in zip(good, records, strict=True):
            out[i] = json_line(record)
            changed[i] = bool(record.get("is_label_issue"))
        rejected = [not isinstance(item, Row) for item in items]
        return pa.table({
            "path": batch.column("path"),
            "line": batch.column("line"),
            "last": batch.column("last"),
            "rejected": pa.array(rejected, pa.bool_()),
            "changed": pa.array(changed, pa.bool_()),
            "json": pa.array(out, pa.string()),
            "node": pa.array([self.node] * len(items), pa.string()),
            "node_ip": pa.array([self.node_ip] * len(items), pa.string()),
            # The encoder graph that ran (``auto`` resolves per actor: int8 on a CPU).
            "precision": pa.array([self.backend.precision] * len(items), pa.string()),
        })


def _file_tag(path: str) -> str:
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:12]


def _atomic_write_text(target: Path, lines: Sequence[str]) -> None:
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(lines)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)


def write_shard(batch: pa.Table, directory: str, output_format: str) -> pa.Table:
    """Write one batch as a shard (rows sorted by file and line) and its rejects shard.

    Named after the batch's first (file, line), so a retried task rewrites the same files.
    Returns one row describing the shard, including the line ranges it holds."""
    if batch.num_rows == 0:
        return pa.table({"shard": pa.array([], pa.string()), "rows": pa.array([], pa.int64()),
                         "changed": pa.array([], pa.int64()),
                         "rejects_shard": pa.array([], pa.string()),
                         "rejects": pa.array([], pa.int64()), "spans": pa.array([], pa.string()),
                         "nodes": pa.array([], pa.string())})
    keys = sorted(zip(batch.column("path").to_pylist(), batch.column("line").to_pylist(),
                      range(batch.num_rows), strict=True))
    ends = batch.column("last").to_pylist()
    rejected = batch.column("rejected").to_pylist()
    texts = batch.column("json").to_pylist()
    name = f"{_file_tag(keys[0][0])}-{keys[0][1]:012d}"
    rows = [texts[i] for _, _, i in keys if not rejected[i]]
    rejects = [texts[i] for _, _, i in keys if rejected[i]]
    target = Path(directory)
    shard = rejects_shard = None
    if rows:
        shard = f"part-{name}.{output_format}"
        if output_format == "parquet":
            scratch = target / f".{shard}.{uuid.uuid4().hex}.jsonl"
            _atomic_write_text(scratch, rows)
            try:
                jsonl_to_parquet(scratch, target / shard)
            finally:
                scratch.unlink(missing_ok=True)
        else:
            _atomic_write_text(target / shard, rows)
    if rejects:
        rejects_shard = f"rejects-{name}.jsonl"
        _atomic_write_text(target / rejects_shard, rejects)
    spans: list[list[Any]] = []
    for path, line, i in keys:
        if spans and spans[-1][0] == path and spans[-1][2] == line - 1:
            spans[-1][2] = line
            spans[-1][3] = spans[-1][3] or ends[i]
        else:
            spans.append([path, line, line, ends[i]])
    return pa.table({
        "shard": [shard],
        "rows": [len(rows)],
        "changed": [sum(bool(c) for c in batch.column("changed").to_pylist())],
        "rejects_shard": [rejects_shard],
        "rejects": [len(rejects)],
        "spans": [json.dumps(spans)],
        # [node id, node address, precision, lines] for each node whose actors refined (or
        # passed on as rejects) lines of this shard
        "nodes": [json.dumps([[*node, n] for node, n in sorted(Counter(zip(
            batch.column("node").to_pylist(), batch.column("node_ip").to_pylist(),
            batch.column("precision").to_pylist(), strict=True)).items())])],
    })


def check_spans(spans: Sequence[Sequence[Any]]) -> dict[str, int]:
    """Lines per input file, after checking that the written line ranges cover each file
    exactly once from line 1 to the line flagged as its last; AccountingError otherwise."""
    by_path: dict[str, list[tuple[int, int, bool]]] = defaultdict(list)
    for path, first, last, ends in spans:
        by_path[path].append((int(first), int(last), bool(ends)))
    problems: list[str] = []
    lines: dict[str, int] = {}
    for path, parts in sorted(by_path.items()):
        parts.sort()
        expected = 1
        for first, last, _ in parts:
            if first < expected:
                problems.append(f"{path}: lines {first}-{min(last, expected - 1)} written twice")
            elif first > expected:
                problems.append(f"{path}: lines {expected}-{first - 1} missing")
            expected = max(expected, last + 1)
        if not any(ends and last == expected - 1 for _, last, ends in parts):
            problems.append(f"{path}: lines after {expected - 1} missing")
        lines[path] = expected - 1
    if problems:
        raise AccountingError("; ".join(problems))
    return lines


@dataclass
class RaySummary(RefineSummary):
    workers: int = 1
    shards: int = 0
    rejects_shards: int = 0
    files: int = 0
    nodes: int = 0
    seconds: float = 0.0
    manifest: dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "manifest"}

    def to_text(self) -> str:
        return (
            f"read {self.read} rows from {self.files} file(s): {self.refined} refined, "
            f"{self.rejected} rejected, {self.changed} labels changed "
            f"({self.rows_per_second:.1f} rows/s, {self.workers} worker(s) on {self.nodes} "
            f"node(s)) -> {self.output}: "
            f"{self.shards} shard(s), {self.rejects_shards} rejects shard(s)\n"
            f"check: input rows {self.read} = output rows {self.refined} + rejected rows "
            f"{self.rejected}: ok"
        )


def expand_corpus(corpus: Sequence[str | Path], check_exists: bool = True) -> list[str]:
    """Local globs expand here (sorted; one matching nothing is an error), so that a shell that
    did not expand them still works; directories and URIs go to Ray's own listing. A remote
    cluster (``check_exists=False``) may see paths this machine does not: Ray checks them."""
    paths: list[str] = []
    for item in corpus:
        text = str(item)
        if "://" not in text and _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{text}: no file matches")
            paths.extend(os.path.abspath(m) for m in matches)
        elif "://" in text:
            paths.append(text)
        else:
            if check_exists and not Path(text).exists():
                raise FileNotFoundError(f"{text}: no such file or directory")
            paths.append(os.path.abspath(text))
    return paths


def _quiet_ray() -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def refine_ray(
    corpus: Sequence[str | Path],
    model: str | Path,
    out: str | Path,
    *,
    backend: str = "onnx",
    precision: str = "auto",
    backend_options: dict[str, Any] | None = None,
    fields: FieldNames = DEFAULT_FIELDS,
    strict: bool = False,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    address: str | None = None,
    batch_size: int = 1024,
    shard_rows: int = 65536,
    output_format: str = "jsonl",
    progress: bool = False,
) -> RaySummary:
    """Refine one or many JSONL corpora (files, globs, directories, ``.jsonl.gz``) into DIR.

    DIR gets ``part-*.jsonl`` (or ``.parquet``) shards, ``rejects-*.jsonl`` shards and
    ``manifest.json``; it appears only when everything is written and the row accounting holds.
    ``address``: an existing cluster, from a machine that is one of its nodes: its GCS address
    ``HOST:PORT`` (what ``ray start --head`` prints; port 6379 by default) or ``auto``. Not
    ``ray://`` (Ray Client cannot run Ray Data's streaming executor). Without one a new local Ray
    starts on this machine, even where ``RAY_ADDRESS`` or a ``ray start`` names a cluster,
    unless this process already runs one (``ray.init`` was called).
    """
    if workers < 1 or batch_size < 1 or shard_rows < 1:
        raise ValueError("workers, batch_size and shard_rows must be >= 1")
    if cpus_per_worker <= 0:
        raise ValueError("cpus_per_worker must be > 0")
    if output_format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {output_format!r}")
    # "auto" is whatever RAY_ADDRESS names, which may be a Ray Client address too.
    target = os.environ.get("RAY_ADDRESS", "auto") if address == "auto" else address
    if target and target.startswith("ray://"):
        raise ValueError(
            f"--address {address}"
            + (f" (RAY_ADDRESS={target})" if target != address else "")
            + ": Ray Data does not run through Ray Client (ray://); run refine "
            "on a node of the cluster with --address HOST:PORT (the GCS address `ray start "
            "--head` prints, port 6379 by default) or --address auto")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists; choose a new output directory")
    paths = expand_corpus(corpus, check_exists=address is None)
    bundle = load_bundle(model)  # fail here, not in every actor, when the bundle is bad
    tokenizer = load_bundle_tokenizer(bundle)
    labels = list(bundle.manifest["labels"])
    staging = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)

    started = not ray.is_initialized()
    if started:
        local = {} if address else {"num_cpus": max(os.cpu_count() or 1,
                                                     int(np.ceil(workers * cpus_per_worker)) + 1)}
        # "local": a new Ray even where RAY_ADDRESS or this machine's latest `ray start` (whose
        # address ray.init() would otherwise join) names a cluster: --address chooses clusters.
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=progress,
                 **local)
    if not progress:
        _quiet_ray()
    # --strict's InputError must reach the driver as itself, not as Ray's generic UDF error.
    context = ray.data.DataContext.get_current()
    raise_original, context.raise_original_map_exception = (
        context.raise_original_map_exception, True)
    start = time.perf_counter()
    try:
        ds = ray.data.read_datasource(JsonlLines(paths))
        ds = ds.map_batches(
            # Its own CPU tasks (a resource request unlike the actors' keeps Ray from fusing
            # it into them): a GPU actor should not spend its time tokenizing.
            parse_and_tokenize, batch_size=None, batch_format="pyarrow", num_cpus=0.5,
            fn_kwargs={"tokenizer": tokenizer, "fields": fields, "labels": labels,
                       "strict": strict},
        )
        ds = ds.map_batches(
            RefineWorker, batch_size=batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
            fn_constructor_kwargs={"bundle_dir": str(bundle.directory), "backend": backend,
                                   "precision": precision,
                                   "backend_options": dict(backend_options or {}),
                                   "fields": fields,
                                   # each actor computes on the cores Ray reserved for it, not
                                   # on every core of the node beside the other actors
                                   "threads": max(1, math.ceil(cpus_per_worker))},
        )
        ds = ds.map_batches(
            write_shard, batch_size=shard_rows, batch_format="pyarrow", num_cpus=0.5,
            fn_kwargs={"directory": str(staging), "output_format": output_format},
        )
        results = ds.take_all()
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        cause = _cause(exc, InputError)
        if cause is not None:  # --strict: the first bad line, as the single-process refine says
            raise InputError(cause.path, cause.line_no, cause.field, cause.reason) from None
        raise
    finally:
        context.raise_original_map_exception = raise_original
        if started:
            ray.shutdown()
    seconds = time.perf_counter() - start
    manifest = _finish(results, paths, bundle, backend, precision, output_format, staging)
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(staging, out)
    totals = manifest["totals"]
    return RaySummary(
        output=str(out), read=totals["input"], refined=totals["output"],
        rejected=totals["rejected"], changed=totals["changed"],
        rows_per_second=totals["input"] / max(seconds, 1e-9),
        rejects=str(out) if totals["rejected"] else None, workers=workers,
        shards=len(manifest["shards"]), rejects_shards=len(manifest["rejects_shards"]),
        files=len(manifest["inputs"]), nodes=len(manifest["nodes"]), seconds=round(seconds, 3),
        manifest=manifest,
    )


def _cause(exc: BaseException, kind: type[InputError]) -> InputError | None:
    """The ``kind`` error a Ray task raised, however Ray wrapped it."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        # Ray's error types subclass the cause's type without its attributes: check for them.
        if isinstance(current, kind) and hasattr(current, "line_no"):
            return current
        seen.add(id(current))
        inner = getattr(current, "cause", None)
        current = inner if isinstance(inner, BaseException) else (
            current.__cause__ or current.__context__)
    return None


def _finish(results: list[dict[str, Any]], paths: list[str], bundle: Any, backend: str,
            precision: str, output_format: str, staging: Path) -> dict[str, Any]:
    """Check the accounting, drop files no shard owns, and write the manifest."""
    spans = [span for r in results for span in json.loads(r["spans"])]
    lines = check_spans(spans)
    shards = sorted((r["shard"], r["rows"], r["changed"]) for r in results if r["shard"])
    rejects = sorted((r["rejects_shard"], r["rejects"]) for r in results if r["rejects_shard"])
    totals = {
        "input": sum(lines.values()),
        "output": sum(n for _, n, _ in shards),
        "rejected": sum(n for _, n in rejects),
        "changed": sum(c for _, _, c in shards),
    }
    if totals["input"] != totals["output"] + totals["rejected"]:
        raise AccountingError(
            f"input rows {totals['input']} != output rows {totals['output']} + rejected rows "
            f"{totals['rejected']}; partial output left in {staging}"
        )
    nodes: Counter[tuple[str, str]] = Counter()
    precisions: set[str] = set()
    for r in results:
        for node_id, address, node_precision, n in json.loads(r["nodes"]):
            nodes[node_id, address] += n
            precisions.add(node_precision)
    owned = {name for name, _, _ in shards} | {name for name, _ in rejects}
    for stray in staging.iterdir():
        if stray.name not in owned:
            stray.unlink()
    manifest = {
        "kind": "sidyp-prod-refined",
        "format": output_format,
        "corpus": paths,
        "bundle": str(bundle.directory),
        "bundle_digest": file_digest(bundle),
        "backend": backend,
        # What the actors ran (one value unless nodes differ), and what was asked for.
        "precision": "/".join(sorted(precisions)) or precision,
        "requested_precision": precision,
        "inputs": [{"path": p, "rows": n} for p, n in sorted(lines.items())],
        "shards": [{"file": f, "rows": n, "changed": c} for f, n, c in shards],
        "rejects_shards": [{"file": f, "rows": n} for f, n in rejects],
        "totals": totals,
        # input rows per node, counted by the model actors that handled them
        "nodes": [{"node_id": node_id, "address": address, "rows": n}
                  for (node_id, address), n in sorted(nodes.items())],
        "complete": True,
    }
    _atomic_write_text(staging / MANIFEST, [json.dumps(manifest, indent=2) + "\n"])
    return manifest

