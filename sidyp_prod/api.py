"""The Python API: ``train``, ``refine`` and ``evaluate`` on files, ``refine_frame`` and
``apply_frame`` on in-memory rows (notebooks). The CLI is a thin layer over these."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .backends import backend_choice, load_backend
from .backends.base import EncodedBatch, ModelBackend
from .backends.torch_backend import TorchBackend
from .bundle import file_digest, load_bundle
from .config import SiDyPConfig
from .corpus import (
    AtomicWriter,
    FieldNames,
    Reject,
    Row,
    default_rejects_path,
    iter_corpus,
    label_set_from_rows,
)
from .decision import DecisionRule, class_noise_ratios, label_shares
from .diffusion import text_key
from .encoder import (
    DEFAULT_ENCODER,
    load_pretrained,
    pad_ids,
    pad_token_id,
    padded_width,
    tokenize,
    unpadded_ids,
    width_batches,
)
from .evaluate import EvaluationReport, evaluate_records, read_records, write_plots
from .formats import converter
from .frames import FrameInput, frame_input, result_frame
from .model_io import LoadedModel, load_model, save_trained
from .readers import count_rows, detect_format
from .refinement import (
    BatchRefinement,
    RefineSettings,
    fit_output_calibration,
    for_new_rows,
    kind_counts,
    output_fields,
    prior_from_neighbors,
    refine_batch,
)
from .stream import ResumableOutput, StdoutOutput
from .training import train_sidyp

DEFAULT_FIELDS = FieldNames()


@dataclass
class TrainSummary:
    bundle: str
    rows: int
    rejected: int
    unlabeled: int
    classes: int
    noise_ratio: float
    noise_ratio_estimated: bool
    prior_kinds: dict[str, int]
    labels_changed: int
    best_diffusion_epoch: int
    temperature: float
    class_noise_ratios: list[float] = field(default_factory=list)  # rho per given class
    # The rho the calibration fitted to (decision.calibration_targets); None: noise_ratio.
    calibration_noise_ratio: float | None = None
    label_bias: list[float] = field(default_factory=list)  # per-class calibration
    label_shares: list[float] | None = None  # the given labels' class shares, when divided by
    seconds: dict[str, float] = field(default_factory=dict)
    refined_out: str | None = None
    rejects: str | None = None
    # Every distribution for every trained row, for benchmarks and callers that want more than
    # the refined labels; not part of the printed or JSON summary.
    refinement: BatchRefinement | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "refinement"}

    def to_text(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.prior_kinds.items())
        how = "estimated" if self.noise_ratio_estimated else "given"
        lines = [
            f"bundle            {self.bundle}",
            f"rows              {self.rows} trained, {self.rejected} rejected, "
            f"{self.unlabeled} without an LLM label",
            f"classes           {self.classes}",
            f"noise ratio       {self.noise_ratio:.3f} ({how})"
            + (f", calibrated to {self.calibration_noise_ratio:.3f}"
               if self.calibration_noise_ratio not in (None, self.noise_ratio) else ""),
            f"prior candidates  {kinds}",
            f"labels changed    {self.labels_changed}",
            "seconds           " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()),
        ]
        if self.refined_out:
            lines.append(f"refined labels    {self.refined_out}")
        if self.rejected:
            lines.append(f"rejects           {self.rejects}")
        return "\n".join(lines)


@dataclass
class RefineSummary:
    output: str
    read: int
    refined: int
    rejected: int
    changed: int
    rows_per_second: float
    rejects: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        text = (
            f"read {self.read} rows: {self.refined} refined, {self.rejected} rejected, "
            f"{self.changed} labels changed ({self.rows_per_second:.1f} rows/s) -> {self.output}"
        )
        if self.rejected:
            text += f"; rejects in {self.rejects}"
        return text


def _split_rows(items: Iterable[Row | Reject]) -> tuple[list[Row], list[Reject]]:
    rows: list[Row] = []
    rejects: list[Reject] = []
    for item in items:
        (rows if isinstance(item, Row) else rejects).append(item)  # type: ignore[arg-type]
    return rows, rejects


def _given_indices(rows: Sequence[Row], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    return np.array([index[r.label] if r.label is not None else -1 for r in rows], dtype=np.int64)


def _write_rejects(path: Path, rejects: Sequence[Reject]) -> None:
    with AtomicWriter(path) as writer:
        for reject in rejects:
            writer.write_json(reject.to_json())


def train(
    corpus: str | Path,
    out: str | Path,
    config: SiDyPConfig | None = None,
    *,
    fields: FieldNames = DEFAULT_FIELDS,
    labels: Sequence[str] | None = None,
    encoder: str | None = None,
    rejects: str | Path | None = None,
    strict: bool = False,
    refined_out: str | Path | None = None,
    overwrite: bool = False,
    export: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    input_format: str | None = None,
) -> TrainSummary:
    """Train SiDyP on a corpus of (text, LLM label) rows and save a model bundle at ``out``.

    The corpus is JSONL, CSV, TSV, Parquet or a ``datasets`` directory (``input_format``, else
    from its name: ``readers.detect_format``).
    ``refined_out`` also writes the corpus's own refined labels (transductive relabeling), in
    the format its extension names (``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``).
    ``export`` also writes the ONNX graphs into the bundle (what ``refine`` runs by default).
    """
    config = config or SiDyPConfig()
    config.validate()
    rows, rejected = _split_rows(
        iter_corpus(corpus, fields, labels, strict=strict, input_format=input_format))
    rejects_path = Path(rejects) if rejects else default_rejects_path(out)
    if rejected:
        _write_rejects(rejects_path, rejected)
    label_set = list(labels) if labels else label_set_from_rows(rows)
    if len(label_set) < 2:
        raise ValueError(f"{corpus}: need at least two classes, found {label_set}")
    given = _given_indices(rows, label_set)
    texts = [r.text for r in rows]
    pretrained = load_pretrained(encoder)
    result = train_sidyp(texts, given, len(label_set), pretrained, config, progress, log)

    start = time.perf_counter()
    settings = RefineSettings.from_config(config, len(label_set))
    # The training rows' encoder outputs are already known: only the denoiser runs.
    transductive = TorchBackend(None, result.denoiser, settings.schedule, settings.scale)
    features = result.features
    conditioning = transductive.condition(features.dynamics)
    keys = [text_key(t) for t in texts]
    parts = []
    for batch in _chunks(np.arange(len(rows)), 256):
        encoded = EncodedBatch(
            features.probs[:, batch], conditioning[:, batch], features.embedding[batch]
        )
        parts.append(
            refine_batch(
                transductive,
                encoded,
                result.prior_weights[:, batch],
                result.prior_kind[:, batch],
                given[batch],
                [keys[i] for i in batch],
                settings,
                update_prior=False,
            )
        )
    refinement = BatchRefinement.concatenate(parts)
    if features.held_out_probs is not None:
        refinement = replace(refinement, held_out=features.held_out_probs)
    # Gold-free calibration: the mean label_score must equal the estimated clean fraction, and
    # each class's mean label_score its clean-marked fraction (a noise ratio the user gave is
    # taken as it is).
    class_noise = class_noise_ratios(result.clean, given, len(label_set))
    shares = label_shares(given, len(label_set)) if config.label_share_correction else None
    temperature, label_bias, calibration_noise = fit_output_calibration(
        refinement, given, config.label_source, result.noise_ratio, class_noise, shares,
        average_held_out=result.noise_ratio_estimated,
    )
    decision = DecisionRule.from_config(config, label_bias)
    predictions = output_fields(
        refinement, given, label_set, config.label_source, temperature, decision, shares
    )
    result.timings["predict"] = time.perf_counter() - start

    summary = TrainSummary(
        bundle=str(out),
        rows=len(rows),
        rejected=len(rejected),
        unlabeled=int((given < 0).sum()),
        classes=len(label_set),
        noise_ratio=result.noise_ratio,
        noise_ratio_estimated=result.noise_ratio_estimated,
        prior_kinds=kind_counts(result.prior_kind),
        labels_changed=sum(p["is_label_issue"] for p in predictions),
        best_diffusion_epoch=result.best_diffusion_epoch,
        temperature=temperature,
        class_noise_ratios=[round(float(r), 6) for r in class_noise],
        calibration_noise_ratio=calibration_noise,
        label_bias=[float(b) for b in label_bias],
        label_shares=[float(x) for x in shares] if shares is not None else None,
        seconds={k: round(v, 2) for k, v in result.timings.items()},
        refined_out=str(refined_out) if refined_out else None,
        rejects=str(rejects_path) if rejected else None,
        refinement=refinement,
    )
    training_record = {**summary.to_dict(), "history": result.history}
    save_trained(out, result, label_set, config, pretrained, encoder or DEFAULT_ENCODER,
                 training_record, overwrite=overwrite)
    if export:
        from .export.onnx import export_onnx

        export_onnx(out)
    if refined_out:
        _write_records(Path(refined_out), (
            {**row.record, **extra} for row, extra in zip(rows, predictions, strict=True)))
    return summary


def _write_records(path: Path, records: Iterable[dict]) -> None:
    """Write whole records atomically, in the format ``path``'s extension names."""
    convert = converter(path)
    target = path.with_name(path.name + ".jsonl") if convert else path
    with AtomicWriter(target) as writer:
        for record in records:
            writer.write_json(record)
    if convert:
        try:
            convert(target, path)
        finally:
            target.unlink()


def _chunks(items: Sequence[Any] | np.ndarray, size: int) -> Iterator[Any]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def refine_rows(
    rows: Sequence[Row],
    model: LoadedModel,
    backend: ModelBackend,
    token_ids: Sequence[np.ndarray] | None = None,
) -> list[dict]:
    """Refine a chunk of parsed rows with a loaded bundle: each input record plus its new fields.

    ``token_ids`` are the rows' unpadded ids (``encoder.unpadded_ids``) when an earlier stage
    already tokenized them (the Ray engine tokenizes on CPU workers, away from the model
    actors); either way each row is padded to a width of its own (``encoder.width_batches``), so
    its output does not depend on the other rows in ``rows``.
    A back end with ``parallel_batches`` > 1 (a remote server) gets that many encoder batches in
    flight at once; results do not depend on it, since each row's noise is seeded by its text.
    """
    config = model.config
    settings = RefineSettings.from_config(config, model.n_classes)
    decision = DecisionRule.from_config(config, model.label_bias)
    given = _given_indices(rows, model.labels)
    texts = [r.text for r in rows]
    if token_ids is None:
        token_ids = unpadded_ids(*tokenize(model.tokenizer, texts))
    pad_id = pad_token_id(model.tokenizer)
    lengths = [len(ids) for ids in token_ids]

    def refine_one(batch: np.ndarray) -> list[dict]:
        ids, mask = pad_ids([token_ids[i] for i in batch], pad_id, padded_width(lengths[batch[0]]))
        encoded = _encode(backend, ids, mask)
        weights, kind = prior_from_neighbors(encoded.embedding, model.indexes, settings)
        # New rows get the iterative refinement of their candidates only where training did.
        refined = refine_batch(
            backend, encoded, weights, kind, given[batch],
            [text_key(texts[i]) for i in batch], settings, update_prior=config.dynamic_prior,
            conditional=config.label_source == "given",
        )
        return output_fields(
            for_new_rows(refined, config.held_out_folds), given[batch], model.labels,
            config.label_source, model.temperature, decision, model.label_shares,
        )

    # Outputs keep input order; the batches only decide what is encoded together.
    batches = width_batches(lengths, config.encode_batch_size)
    parallel = int(getattr(backend, "parallel_batches", 1))
    if parallel > 1 and len(batches) > 1:
        with ThreadPoolExecutor(min(parallel, len(batches))) as pool:
            results = list(pool.map(refine_one, batches))
    else:
        results = [refine_one(batch) for batch in batches]
    extras: list[dict | None] = [None] * len(rows)
    for batch, fields in zip(batches, results, strict=True):
        for i, extra in zip(batch, fields, strict=True):
            extras[i] = extra
    return [{**row.record, **(extra or {})} for row, extra in zip(rows, extras, strict=True)]


def _encode(backend: ModelBackend, ids: np.ndarray, mask: np.ndarray) -> EncodedBatch:
    """``backend.encode``, with a lone row encoded beside a copy of itself: ONNX Runtime's CPU
    kernels round a one-row batch differently from the same row in a larger one on some CPUs."""
    if len(ids) > 1:
        return backend.encode(ids, mask)
    pair = backend.encode(np.repeat(ids, 2, axis=0), np.repeat(mask, 2, axis=0))
    return EncodedBatch(pair.probs[:, :1], pair.conditioning[:, :1], pair.embedding[:1])


def refine(
    corpus: str | Path,
    model: str | Path,
    out: str | Path,
    *,
    backend: str = "onnx",
    precision: str = "fp32",
    fields: FieldNames = DEFAULT_FIELDS,
    rejects: str | Path | None = None,
    strict: bool = False,
    chunk_size: int = 1024,
    resume: bool = False,
    progress: bool = False,
    triton_url: str | None = None,
    triton_retry_seconds: float = 120.0,
    input_format: str | None = None,
) -> RefineSummary:
    """Refine a corpus with a trained bundle, streaming it in chunks of ``chunk_size`` rows.

    The corpus is JSONL, CSV, TSV, Parquet or a ``datasets`` directory (``input_format``, else
    from its name). ``out`` ending in ``.parquet``, ``.csv`` or ``.tsv`` writes that format,
    ``-`` writes JSONL to stdout, anything else JSONL. Memory stays bounded by the chunk size.
    A killed run continues with ``resume=True`` (from the row position the journal records).
    ``triton_url`` sends the model calls to that Triton server (backend "triton"); the models it
    serves are checked against the bundle before the first row.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if resume and str(corpus) == "-":
        raise ValueError("--resume needs the corpus in a file: standard input cannot be re-read")
    kind = detect_format(corpus, input_format)
    bundle = load_bundle(model)
    loaded = load_model(bundle)
    backend, options = backend_choice(backend, triton_url, triton_retry_seconds)
    runtime = load_backend(bundle, backend, precision=precision, **options)
    rejects_path = Path(rejects) if rejects else default_rejects_path(out)
    sink: ResumableOutput | StdoutOutput
    if str(out) == "-":
        if resume:
            raise ValueError("--resume needs an output file, not stdout")
        sink = StdoutOutput(rejects_path)
    else:
        # What must match for a resumed run to continue this one byte for byte.
        identity = {
            "corpus": _file_identity(corpus),
            **({"input_format": kind} if kind != "jsonl" else {}),
            "bundle": file_digest(bundle),
            "backend": backend,
            "precision": getattr(runtime, "precision", "fp32"),
            "chunk_size": chunk_size,
            "fields": asdict(fields),
            "rejects": str(Path(rejects_path).absolute()),
        }
        sink = ResumableOutput(Path(out), rejects_path, identity, resume)
    done_lines = sink.progress.lines
    start, refined_before = time.perf_counter(), sink.progress.refined
    bar = tqdm(total=count_rows(corpus, kind), initial=done_lines, desc="refine", unit="rows",
               disable=not progress)
    rows: list[Row] = []
    rejected: list[dict] = []
    line = done_lines

    def flush() -> None:
        sink.write_chunk(refine_rows(rows, loaded, runtime), rejected, line)
        bar.update(len(rows) + len(rejected))
        rows.clear()
        rejected.clear()

    try:
        for item in iter_corpus(corpus, fields, loaded.labels, strict=strict, input_format=kind):
            if item.line_no <= done_lines:
                continue
            line = item.line_no
            if isinstance(item, Reject):
                rejected.append(item.to_json())
            else:
                rows.append(item)
            if len(rows) >= chunk_size:
                flush()
        if rows or rejected:
            flush()
        sink.finish(convert=converter(out) if str(out) != "-" else None)
    except BaseException:
        sink.close()
        raise
    finally:
        bar.close()
        if hasattr(runtime, "close"):
            runtime.close()  # a remote back end's connection pool
    p = sink.progress
    elapsed = max(time.perf_counter() - start, 1e-9)
    return RefineSummary(str(out), p.lines, p.refined, p.rejected, p.changed,
                         (p.refined - refined_before) / elapsed,
                         str(rejects_path) if p.rejected else None)


def _file_identity(path: str | Path) -> dict[str, Any]:
    """What must not change between a run and its resumption."""
    if str(path) == "-":
        return {"path": "-"}
    path = Path(path)
    if path.is_dir():  # a datasets directory: its files
        return {"path": str(path.absolute()), "files": [
            [str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
            for f in sorted(path.rglob("*")) if f.is_file()]}
    stat = path.stat()
    return {"path": str(path.absolute()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def evaluate(
    refined: str | Path,
    *,
    gold_field: str = "gold_label",
    plot_dir: str | Path | None = None,
) -> EvaluationReport:
    """Score a refined corpus against its gold labels; optionally write the two plots."""
    report = evaluate_records(read_records(refined), gold_field=gold_field)
    if plot_dir is not None:
        write_plots(report, plot_dir, title=Path(refined).name)
    return report


def _frame_items(source: FrameInput, labels: Sequence[str] | None, strict: bool
                 ) -> tuple[list[Row], list[Reject]]:
    rows, rejected = _split_rows(source.parse(labels))
    if strict and rejected:
        raise ValueError(f"data[{rejected[0].line_no - 1}]: {rejected[0].reason}")
    return rows, rejected


def refine_frame(
    data: Any,
    labels: Sequence[Any] | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    config: SiDyPConfig | None = None,
    encoder: str | None = None,
    label_set: Sequence[str] | None = None,
    save_model: str | Path | None = None,
    overwrite: bool = False,
    strict: bool = False,
    progress: bool = False,
) -> Any:  # -> pandas.DataFrame
    """Train on in-memory rows and return every row's refined label, in input order.

    Parameters
    ----------
    data : sequence of str, pandas.DataFrame or datasets.Dataset
        The texts; a table holds them in ``text_column`` and the LLM's labels in
        ``label_column`` (a ``datasets`` ClassLabel column gives its names).
    labels : sequence, optional
        The LLM's labels beside a sequence of texts (or instead of ``label_column``); None,
        NaN or pandas NA is a refusal (no label).
    config, encoder, label_set
        As for :func:`train` (``label_set``: its ``labels``, so that rare classes are kept).
    save_model : path, optional
        Keep the trained bundle there (with its ONNX graphs), for :func:`apply_frame`,
        ``sidyp-prod refine``, export and serving; by default it is discarded.
    strict : bool
        Raise ValueError at the first unusable row instead of returning it unrefined.

    Returns
    -------
    pandas.DataFrame
        One row per input row with the input's index: ``given_label``, ``predicted_label``,
        ``label_score``, ``is_label_issue``, ``confidence``, ``candidates`` (cleanlab's
        vocabulary; labels as strings) and ``reject_reason`` (None for a refined row; for an
        unusable one, such as a blank text, the reason and nulls in the other columns).
        ``attrs["summary"]`` holds the training summary (:class:`TrainSummary`).

    The labels are those ``train(..., refined_out=...)`` writes for the same rows, seed and
    settings: **each row's label comes from classifiers that never saw that row's label**.
    """
    source = frame_input(data, labels, text_column=text_column, label_column=label_column)
    _, rejected = _frame_items(source, label_set, strict)
    with tempfile.TemporaryDirectory(prefix="sidyp-frame-") as tmp:
        corpus, refined = Path(tmp) / "corpus.jsonl", Path(tmp) / "refined.jsonl"
        corpus.write_bytes("".join(source.jsonl()).encode("utf-8"))
        summary = train(corpus, save_model or Path(tmp) / "bundle", config, labels=label_set,
                        encoder=encoder, rejects=Path(tmp) / "rejects.jsonl",
                        refined_out=refined, overwrite=overwrite,
                        export=save_model is not None, progress=progress)
        frame = result_frame(source, read_records(refined), rejected)
    frame.attrs["summary"] = {**summary.to_dict(), "refined_out": None, "rejects": None}
    return frame


def apply_frame(
    model: str | Path,
    data: Any,
    labels: Sequence[Any] | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    backend: str = "onnx",
    precision: str = "fp32",
    chunk_size: int = 1024,
    strict: bool = False,
) -> Any:  # -> pandas.DataFrame
    """Refine new in-memory rows with a saved bundle (``train``'s or ``refine_frame``'s
    ``save_model``): the same labels ``refine`` writes for these rows in a file.

    ``data``, ``labels``, the columns and ``strict`` are as for :func:`refine_frame`, and so is
    the DataFrame returned; a label outside the bundle's label set is a rejected row.
    ``backend`` and ``precision`` are as for :func:`refine`.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    bundle = load_bundle(model)
    loaded = load_model(bundle)
    source = frame_input(data, labels, text_column=text_column, label_column=label_column)
    rows, rejected = _frame_items(source, loaded.labels, strict)
    runtime = load_backend(bundle, backend, precision=precision)
    try:
        refined = [record for chunk in _chunks(rows, chunk_size)
                   for record in refine_rows(chunk, loaded, runtime)]
    finally:
        if hasattr(runtime, "close"):
            runtime.close()
    return result_frame(source, refined, rejected)
