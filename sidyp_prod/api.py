"""The Python API: ``train``, ``refine``, ``report`` and ``evaluate`` on files,
``refine_corpus`` (train and refine in one call), ``refine_frame`` and ``apply_frame`` on
in-memory rows (notebooks). The CLI is a thin layer over these."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .backends import backend_choice, load_backend
from .bundle import BundleError, file_digest, load_bundle
from .checks import (
    DEFAULT_MAX_REJECT_FRACTION,
    CorpusTally,
    check_bundle_target,
    check_corpus_path,
    check_distinct,
    check_parent,
    first_reject_reasons,
    refine_problems,
    require_train_extra,
    small_classes_text,
)
from .config import SiDyPConfig, resolve_preset
from .corpus import (
    AtomicWriter,
    FieldNames,
    Reject,
    Row,
    default_model_path,
    default_refined_path,
    default_rejects_path,
    iter_corpus,
)
from .decision import small_classes
from .evaluate import (
    EvaluationReport,
    evaluate_located,
    read_located_records,
    read_records,
    write_plots,
)
from .formats import converter
from .frames import FrameInput, frame_input, result_frame
from .model_io import load_model
from .pipeline import given_indices, refine_chunk, refine_rows
from .readers import count_rows, detect_format, file_identity, same_file, same_path
from .report import ReportSummary, build_report
from .stream import ResumableOutput, StdoutOutput, refine_in_chunks
from .summaries import CorpusSummary, RefineSummary, TrainSummary
from .training_rows import (
    read_training_rows,
    split_rows,
    trusted_codes,
    write_records,
    write_rejects,
)

__all__ = [
    "CorpusSummary", "RefineSummary", "TrainSummary", "apply_frame", "default_model_path",
    "default_refined_path", "evaluate", "refine", "refine_corpus", "refine_frame", "report",
    "train", "training_config",
]

DEFAULT_FIELDS = FieldNames()


def training_config(preset: str = "auto", device: str = "auto",
                    **overrides: Any) -> tuple[str, SiDyPConfig]:
    """The preset ``train`` runs (``auto``: ``quality`` on a GPU, else ``default``) and its
    configuration with ``overrides`` on top."""
    require_train_extra("training")
    from .device import resolve_device

    name = resolve_preset(preset, resolve_device(device).type == "cuda")
    return name, SiDyPConfig.from_preset(name, **overrides)


def train(
    corpus: str | Path,
    out: str | Path,
    config: SiDyPConfig | None = None,
    *,
    fields: FieldNames = DEFAULT_FIELDS,
    labels: Sequence[str] | None = None,
    encoder: str | None = None,
    embedding_model: str | None = None,
    rejects: str | Path | None = None,
    strict: bool = False,
    refined_out: str | Path | None = None,
    overwrite: bool = False,
    export: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    device: str = "auto",
    input_format: str | None = None,
    trusted_field: str | None = None,
) -> TrainSummary:
    """Train SiDyP on a corpus of (text, LLM label) rows and save a model bundle at ``out``.

    The corpus is JSONL, CSV, TSV, Parquet or a ``datasets`` directory (``input_format``, else
    from its name: ``readers.detect_format``).
    ``refined_out`` also writes the corpus's own refined labels (transductive relabeling), in
    the format its extension names (``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``).
    ``export`` also writes the ONNX graphs into the bundle (what ``refine`` runs by default).
    ``config`` None: the ``auto`` preset, as the CLI's (``training_config``).
    ``encoder`` is a local Hugging Face checkpoint directory or a model id in the local cache
    (default: the packaged all-MiniLM-L6-v2); ``embedding_model`` likewise, the sentence
    embedding model of the neighbour prior (default: the encoder's own pretrained layers);
    ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (auto: CUDA when available).
    ``trusted_field``: the field where some rows (a random sample) carry a person's label; never
    trained on, it decides whether changes fix more labels than they break (changing fewer or
    none when not) and replaces the calibration's noise ratio where the estimate misses theirs
    (``trusted.py``).
    """
    require_train_extra("training")
    from .training_pipeline import save_model, train_model

    config = config or training_config("auto", device)[1]
    config.validate()
    # Every path is checked before the training, which takes minutes.
    check_corpus_path(corpus, input_format)
    check_bundle_target(out, overwrite)
    rejects_path = Path(rejects) if rejects else default_rejects_path(out)
    check_parent(refined_out, "--refined-out")
    if rejects:
        check_parent(rejects_path, "--rejects")
    check_distinct({"the corpus": corpus, "--refined-out": refined_out, "--rejects": rejects_path})
    tally = CorpusTally(fields.label)
    rows, rejected, label_set, usable, positions = read_training_rows(
        corpus, fields, labels, strict, config.max_train_rows, config.seed, tally, input_format,
        trusted_field,
    )
    write_rejects(rejects_path, rejected)
    if not tally.labelled:
        raise ValueError(tally.no_labels_message(corpus, rejects_path))
    if len(label_set) < 2:
        raise ValueError(f"{corpus}: need at least two classes, found {label_set}"
                         + (f" ({len(rejected)} rows rejected: {rejects_path})" if rejected
                            else ""))
    given = given_indices(rows, label_set)
    trusted = trusted_codes(rows, trusted_field, label_set, corpus) if trusted_field else None
    small = small_classes(given, len(label_set), config.min_class_rows)
    warnings = [w for w in (
        tally.label_field_warning(),
        small_classes_text(small, given, label_set, config.min_class_rows),
    ) if w]
    for warning in warnings:
        if log:
            log(f"warning: {warning}")
    texts = [r.text for r in rows]
    trained = train_model(texts, given, label_set, config, small, encoder=encoder,
                          embedding_model=embedding_model, device=device, progress=progress,
                          log=log, work_dir=Path(out).absolute().parent, trusted=trusted)
    summary = TrainSummary.from_training(
        trained,
        bundle=str(out),
        rows=len(rows),
        rejected=len(rejected),
        unlabeled=int((given < 0).sum()),
        classes=len(label_set),
        refined_out=str(refined_out) if refined_out else None,
        rejects=str(rejects_path) if rejected else None,
        corpus=file_identity(corpus),
        reject_reasons=tally.reasons,
        small_classes=[label_set[c] for c in small],
        warnings=warnings,
    )
    save_model(out, trained, label_set, config, summary.bundle_record(), positions,
               overwrite=overwrite, export_texts=texts if export else None)
    predictions = trained.fit.predictions
    summary.predictions = {row.line_no: extra for row, extra in zip(rows, predictions,
                                                                    strict=True)}
    if refined_out and len(rows) == usable:
        write_records(Path(refined_out), (
            {**row.record, **extra} for row, extra in zip(rows, predictions, strict=True)))
    elif refined_out:
        refined = refine(corpus, out, refined_out, backend="onnx" if export else "torch",
                         fields=fields, rejects=rejects_path, known=summary.predictions,
                         input_format=input_format)
        summary.refined_as_new = refined.refined - len(rows)
    return summary


def _chunks(items: Sequence[Any] | np.ndarray, size: int) -> Iterator[Any]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def refine(
    corpus: str | Path,
    model: str | Path,
    out: str | Path,
    *,
    backend: str = "onnx",
    precision: str = "auto",
    fields: FieldNames = DEFAULT_FIELDS,
    rejects: str | Path | None = None,
    strict: bool = False,
    chunk_size: int = 1024,
    resume: bool = False,
    progress: bool = False,
    triton_url: str | None = None,
    triton_retry_seconds: float = 120.0,
    known: Mapping[int, dict] | None = None,
    report: str | Path | None = None,
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
    log: Callable[[str], None] | None = None,
    input_format: str | None = None,
) -> RefineSummary:
    """Refine a corpus with a trained bundle, streaming it in chunks of ``chunk_size`` rows.

    ``known`` maps input line numbers to refined fields already computed (the training rows'
    own, from classifiers that never saw their labels): those rows take them as they are.

    The corpus is JSONL, CSV, TSV, Parquet or a ``datasets`` directory (``input_format``, else
    from its name); ``out`` ending in ``.parquet``, ``.csv`` or ``.tsv`` writes that format,
    ``-`` JSONL to stdout, anything else JSONL. Memory stays bounded by the chunk size. A killed
    run continues with ``resume=True`` (with nothing to resume, it starts from the beginning and
    says so in ``notes``).
    ``triton_url`` sends the model calls to that Triton server (backend "triton"); the models it
    serves are checked against the bundle before the first row, and ``log`` is told when the
    server does not answer and the retries begin. The summary's ``problems`` say
    why a finished run still failed: more than ``max_reject_fraction`` of the rows rejected, or
    no label of the corpus in the bundle's label set. For the corpus a bundle was trained on,
    ``train(refined_out=...)`` gives better labels (classifiers that never saw each row's label).
    An empty corpus, a directory or a ``strict`` refusal leaves no output file behind.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    if not 0.0 <= max_reject_fraction <= 1.0:
        raise ValueError("max_reject_fraction must be in [0, 1]")
    if report is not None and str(out) == "-":
        raise ValueError("--report needs the output in a file: the page is built from it")
    if resume and str(corpus) == "-":
        raise ValueError("--resume needs the corpus in a file: standard input cannot be re-read")
    check_corpus_path(corpus, input_format)
    kind = detect_format(corpus, input_format)
    if count_rows(corpus, kind) == 0:
        raise ValueError(f"{corpus}: the file is empty: nothing to refine")
    rejects_path = Path(rejects) if rejects else default_rejects_path(out)
    check_parent(out, "--out")
    check_parent(rejects_path, "--rejects")
    check_distinct({"the corpus": corpus, "--out": out, "--rejects": rejects_path})
    bundle = load_bundle(model)
    loaded = load_model(bundle)
    backend, options = backend_choice(backend, triton_url, triton_retry_seconds)
    if log is not None and backend == "triton":
        options["log"] = log
    runtime = load_backend(bundle, backend, precision=precision, **options)
    sink: ResumableOutput | StdoutOutput
    if str(out) == "-":
        if resume:
            raise ValueError("--resume needs an output file, not stdout")
        sink = StdoutOutput(rejects_path)
    else:
        # What must match for a resumed run to continue this one byte for byte.
        identity = {
            "corpus": file_identity(corpus),
            **({"input_format": kind} if kind != "jsonl" else {}),
            "bundle": file_digest(bundle),
            "backend": backend,
            "precision": runtime.precision,
            "chunk_size": chunk_size,
            "fields": asdict(fields),
            "rejects": str(Path(rejects_path).resolve()),
        }
        sink = ResumableOutput(Path(out), rejects_path, identity, resume)
    notes = [sink.notice] if getattr(sink, "notice", None) else []
    if known is None and same_file(bundle.manifest.get("training", {}).get("corpus"), corpus):
        notes.append(
            f"{corpus} is the corpus this bundle was trained on: its rows were refined as new "
            "rows; `train --refined-out` gives them better labels (classifiers that never saw "
            "each row's label)")
    start, refined_before = time.perf_counter(), sink.progress.refined
    bar = tqdm(total=count_rows(corpus, kind), initial=sink.progress.lines, desc="refine",
               unit="rows", disable=not progress)
    tally = CorpusTally(fields.label)
    try:
        refine_in_chunks(
            iter_corpus(corpus, fields, loaded.labels, strict=strict, input_format=kind), sink,
            lambda rows: refine_chunk(rows, loaded, runtime, known), chunk_size, tally.observe,
            bar.update,
        )
        if sink.progress.lines == 0:
            raise ValueError(f"{corpus}: no lines: nothing to refine")
        sink.finish(convert=converter(out) if str(out) != "-" else None)
    except BaseException as exc:
        # A refusal (bad input) leaves nothing behind; an interruption keeps what --resume needs.
        sink.close(discard=isinstance(exc, ValueError))
        raise
    finally:
        bar.close()
        runtime.close()  # a remote back end's connection pool
    p = sink.progress
    elapsed = max(time.perf_counter() - start, 1e-9)
    warning = tally.label_field_warning()
    if warning:
        notes.append(warning)
    summary = RefineSummary(
        str(out), p.lines, p.refined, p.rejected, p.changed,
        (p.refined - refined_before) / elapsed, str(rejects_path) if p.rejected else None,
        filled=p.filled, reject_reasons=first_reject_reasons(rejects_path) if p.rejected else [],
        notes=notes,
        problems=refine_problems(p.lines, p.rejected, tally, loaded.labels, max_reject_fraction),
        precision=runtime.precision,
    )
    if report is not None:
        run = {"seconds": round(elapsed, 1), "rows/s": round(summary.rows_per_second, 1),
               "backend": backend, "precision": runtime.precision,
               "rejected": p.rejected}
        build_report(out, report, model=model, fields=fields, run=run)
        summary.report = str(report)
    return summary


def refine_corpus(
    corpus: str | Path,
    out: str | Path | None = None,
    config: SiDyPConfig | None = None,
    *,
    save_model: str | Path | None = None,
    fields: FieldNames = DEFAULT_FIELDS,
    labels: Sequence[str] | None = None,
    encoder: str | None = None,
    embedding_model: str | None = None,
    device: str = "auto",
    rejects: str | Path | None = None,
    strict: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    chunk_size: int = 1024,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    report: str | Path | None = None,
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
    input_format: str | None = None,
    trusted_field: str | None = None,
) -> CorpusSummary:
    """Train on a corpus and write every row's refined label: the one-command path.

    The training rows (a sample of ``config.max_train_rows`` drawn per LLM label past that
    size) get their labels from classifiers that never saw them, as ``train --refined-out``
    gives them; the rest stream through the saved bundle as new rows. The bundle is kept at
    ``save_model`` (default beside the corpus). With ``resume`` a finished training is reused
    (its bundle verified, trained on this very file) and a killed refine phase continues.
    ``trusted_field``: as ``train``'s.
    """
    if str(corpus) == "-":
        raise ValueError("refine without --model trains first: give the corpus as a file")
    out = Path(out) if out is not None else default_refined_path(corpus)
    model_dir = Path(save_model) if save_model is not None else default_model_path(corpus)
    rejects_path = Path(rejects) if rejects else default_rejects_path(out)
    # The training rows' fields, kept beside the output until it is finished.
    known_path = out.with_name(out.name + ".training.jsonl")
    check_distinct({"the corpus": corpus, "--out": out, "--rejects": rejects_path})
    trained: TrainSummary | None = None
    known = _reusable_training(model_dir, corpus, known_path) if resume else None
    if known is None:
        # --resume retrains over a bundle of this corpus path (a training killed before its
        # rows were kept, or of an older version of the file); never over anything else.
        if model_dir.exists() and not overwrite and not (
                resume and _trained_on_path(model_dir, corpus)):
            raise FileExistsError(
                f"{model_dir} exists and is not a bundle trained on {corpus}: pass "
                "--overwrite to replace it, or --save-model DIR" if resume else
                f"{model_dir} exists: pass --resume to reuse a finished training of this "
                "corpus, --overwrite to replace it, or --save-model DIR"
            )
        trained = train(corpus, model_dir, config, fields=fields, labels=labels,
                        encoder=encoder, embedding_model=embedding_model,
                        rejects=rejects_path, strict=strict,
                        overwrite=True, progress=progress, log=log, device=device,
                        input_format=input_format, trusted_field=trusted_field)
        known = trained.predictions
        with AtomicWriter(known_path) as writer:
            for line_no, extra in known.items():
                writer.write_json({"line": line_no, "fields": extra})
    journal = out.with_name(out.name + ".journal.json")
    refined = refine(corpus, model_dir, out, fields=fields, rejects=rejects_path, strict=strict,
                     chunk_size=chunk_size, resume=resume and trained is None and journal.exists(),
                     progress=progress, known=known, report=report,
                     max_reject_fraction=max_reject_fraction, log=log,
                     input_format=input_format)
    known_path.unlink(missing_ok=True)
    return CorpusSummary(str(model_dir), trained, refined)


def _trained_on_path(model_dir: Path, corpus: str | Path) -> bool:
    """Whether ``model_dir`` is a bundle whose manifest names ``corpus``'s path as its training
    corpus (whatever the file holds now; the files' hashes are not checked)."""
    try:
        manifest = load_bundle(model_dir, verify=False).manifest
    except BundleError:
        return False
    return same_path(manifest.get("training", {}).get("corpus"), corpus)


def _reusable_training(
    model_dir: Path, corpus: str | Path, known_path: Path
) -> dict[int, dict] | None:
    """The training rows' fields of a finished training of this very corpus file, or None."""
    if not (model_dir / "manifest.json").is_file() or not known_path.is_file():
        return None
    try:
        bundle = load_bundle(model_dir)  # verifies every file's hash
    except BundleError:
        return None
    if not same_file(bundle.manifest.get("training", {}).get("corpus"), corpus):
        return None
    known = {}
    with known_path.open(encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            known[int(item["line"])] = item["fields"]
    return known


def report(
    refined: str | Path,
    out: str | Path,
    **options: Any,
) -> ReportSummary:
    """Write the review page of a refined corpus: one self-contained HTML file of its label
    issues (options: :func:`sidyp_prod.report.build_report`)."""
    return build_report(refined, out, **options)


def evaluate(
    refined: str | Path,
    *,
    gold_field: str = "gold_label",
    plot_dir: str | Path | None = None,
) -> EvaluationReport:
    """Score a refined corpus against its gold labels; optionally write the two plots."""
    report = evaluate_located(read_located_records(refined), gold_field=gold_field)
    if plot_dir is not None:
        write_plots(report, plot_dir, title=Path(refined).name)
    return report


def _frame_items(source: FrameInput, labels: Sequence[str] | None, strict: bool
                 ) -> tuple[list[Row], list[Reject]]:
    rows, rejected = split_rows(source.parse(labels))
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
    embedding_model: str | None = None,
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
    config, encoder, embedding_model, label_set
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
                        encoder=encoder, embedding_model=embedding_model,
                        rejects=Path(tmp) / "rejects.jsonl",
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
    precision: str = "auto",
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
        runtime.close()
    return result_frame(source, refined, rejected)
