"""The Python API: ``train``, ``refine``, ``report`` and ``evaluate`` on files,
``refine_corpus`` (train and refine in one call), ``refine_frame`` and ``apply_frame`` on
in-memory rows (notebooks). The CLI is a thin layer over these."""

from __future__ import annotations

import copy
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .backends import backend_choice, load_backend
from .bundle import file_digest, load_bundle
from .checks import (
    DEFAULT_MAX_REJECT_FRACTION,
    CorpusTally,
    check_bundle_target,
    check_corpus_path,
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
    default_rejects_path,
    iter_corpus,
    label_set_from_labels,
    label_set_from_rows,
)
from .decision import small_classes
from .evaluate import EvaluationReport, evaluate_records, read_records, write_plots
from .formats import converter
from .frames import FrameInput, frame_input, result_frame
from .model_io import load_model
from .noise import noise_ratio_at_clip
from .pipeline import given_indices, refine_chunk, refine_rows
from .readers import count_rows, detect_format
from .refinement import (
    BatchRefinement,
    kind_counts,
)
from .report import ReportSummary, build_report
from .stream import ResumableOutput, StdoutOutput

DEFAULT_FIELDS = FieldNames()
# Training rows that pick the int8 encoder graph's fp32 channels (export/quantize.py).
CALIBRATION_ROWS = 256


def calibration_sample(texts: Sequence[str]) -> list[str]:
    """Evenly spaced training texts (deterministic) for the int8 graph's calibration: the widest
    activation channels depend on the text the model sees."""
    step = max(1, len(texts) // CALIBRATION_ROWS)
    return list(texts[::step][:CALIBRATION_ROWS])


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
    # 90% interval of the noise ratio (noise.noise_ratio_interval); None when it was given.
    noise_ratio_interval: tuple[float, float] | None = None
    label_bias: list[float] = field(default_factory=list)  # per-class calibration
    label_shares: list[float] | None = None  # the given labels' class shares, when divided by
    seconds: dict[str, float] = field(default_factory=dict)
    refined_out: str | None = None
    rejects: str | None = None
    refined_as_new: int = 0  # --refined-out rows past the training sample, refined as new rows
    corpus: dict[str, Any] = field(default_factory=dict)  # the trained corpus's file identity
    # The training rows' refined fields by input line (not printed): refine_corpus reuses them.
    predictions: dict[int, dict] = field(default_factory=dict, repr=False, compare=False)
    reject_reasons: list[str] = field(default_factory=list)  # the first few
    noise_ratio_at_clip: bool = False  # the estimate hit a bound of noise.NOISE_RATIO_CLIP
    # Classes with fewer LLM labels than min_class_rows: kept, never a change target.
    small_classes: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Every distribution for every trained row, for benchmarks and callers that want more than
    # the refined labels; not part of the printed or JSON summary.
    refinement: BatchRefinement | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        hidden = ("refinement", "predictions")
        return {k: copy.deepcopy(getattr(self, k)) for k in self.__dataclass_fields__
                if k not in hidden}

    def to_text(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.prior_kinds.items())
        how = "estimated" if self.noise_ratio_estimated else "given"
        if self.noise_ratio_at_clip:
            how += (", at a bound of its clip (0.05, 0.9): not a measurement; small classes "
                    "or too few rows, --noise-ratio sets it")
        lines = [
            f"bundle            {self.bundle}",
            f"rows              {self.rows} trained, {self.rejected} rejected, "
            f"{self.unlabeled} without an LLM label",
            f"classes           {self.classes}",
            f"noise ratio       {self.noise_ratio:.3f} ({how})"
            + (f", calibrated to {self.calibration_noise_ratio:.3f}"
               if self.calibration_noise_ratio not in (None, self.noise_ratio) else "")
            + (f" (90% interval {self.noise_ratio_interval[0]:.3f} to "
               f"{self.noise_ratio_interval[1]:.3f})" if self.noise_ratio_interval else ""),
            f"prior candidates  {kinds}",
            f"labels changed    {self.labels_changed}",
            "seconds           " + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()),
        ]
        if self.refined_out:
            lines.append(f"refined labels    {self.refined_out}"
                         + (f" ({self.rows} trained on, {self.refined_as_new} refined as new)"
                            if self.refined_as_new else ""))
        if self.rejected:
            lines.append(f"rejects           {self.rejects}")
            lines += [f"                  {reason}" for reason in self.reject_reasons]
        lines += [f"warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)


@dataclass
class RefineSummary:
    output: str
    read: int
    refined: int
    rejected: int
    changed: int  # rows with an LLM label whose refined label differs (is_label_issue)
    rows_per_second: float
    rejects: str | None = None
    report: str | None = None  # the review page (refine --report)
    filled: int = 0  # rows without an LLM label, which got one
    reject_reasons: list[str] = field(default_factory=list)  # the first few
    notes: list[str] = field(default_factory=list)  # what the user should know, not a failure
    # Why the run failed although every row was written (exit code 3 in the CLI).
    problems: list[str] = field(default_factory=list)
    precision: str = ""  # the encoder graph that ran: fp32 or int8

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        text = (
            f"read {self.read} rows: {self.refined} refined, {self.rejected} rejected, "
            f"{self.changed} labels changed (LLM label replaced), {self.filled} unlabeled rows "
            f"given a label ({self.rows_per_second:.1f} rows/s, {self.precision or 'fp32'} "
            f"encoder) -> {self.output}"
        )
        if self.rejected:
            text += f"; rejects in {self.rejects}"
            text += "".join(f"\n  {reason}" for reason in self.reject_reasons)
        text += "".join(f"\nnote: {note}" for note in self.notes)
        text += "".join(f"\nerror: {problem}" for problem in self.problems)
        if self.report:
            text += f"\nreview the label issues: {self.report}"
        return text


def _split_rows(items: Iterable[Row | Reject]) -> tuple[list[Row], list[Reject]]:
    rows: list[Row] = []
    rejects: list[Reject] = []
    for item in items:
        (rows if isinstance(item, Row) else rejects).append(item)  # type: ignore[arg-type]
    return rows, rejects


def _tallied(items: Iterable[Row | Reject], tally: CorpusTally) -> Iterator[Row | Reject]:
    for item in items:
        tally.observe(item)
        yield item


def _write_rejects(path: Path, rejects: Sequence[Reject]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # the bundle's parent, made as save_bundle does
    with AtomicWriter(path) as writer:
        for reject in rejects:
            writer.write_json(reject.to_json())


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
) -> TrainSummary:
    """Train SiDyP on a corpus of (text, LLM label) rows and save a model bundle at ``out``.

    The corpus is JSONL, CSV, TSV, Parquet or a ``datasets`` directory (``input_format``, else
    from its name: ``readers.detect_format``).
    ``refined_out`` also writes the corpus's own refined labels (transductive relabeling), in
    the format its extension names (``.jsonl``, ``.csv``, ``.tsv``, ``.parquet``).
    ``export`` also writes the ONNX graphs into the bundle (what ``refine`` runs by default).
    ``encoder`` is a local Hugging Face checkpoint directory or a model id in the local cache
    (default: the packaged all-MiniLM-L6-v2); ``embedding_model`` likewise, the sentence
    embedding model of the neighbour prior (default: the encoder's own pretrained layers);
    ``device`` is ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (auto: CUDA when available).
    """
    require_train_extra("training")
    from .device import resolve_device
    from .post_training import fit_training_rows
    from .pretrained import load_pretrained, resolve_encoder
    from .torch_bundle import save_trained
    from .training import train_sidyp

    config = config or SiDyPConfig()
    config.validate()
    # Every path is checked before the training, which takes minutes.
    check_corpus_path(corpus, input_format)
    check_bundle_target(out, overwrite)
    torch_device = resolve_device(device)
    rejects_path = Path(rejects) if rejects else default_rejects_path(out)
    check_parent(refined_out, "--refined-out")
    if rejects:
        check_parent(rejects_path, "--rejects")
    tally = CorpusTally(fields.label)
    rows, rejected, label_set, usable = _training_rows(
        corpus, fields, labels, strict, config.max_train_rows, config.seed, tally, input_format
    )
    if rejected:
        _write_rejects(rejects_path, rejected)
    if not tally.labelled:
        raise ValueError(tally.no_labels_message(corpus, rejects_path))
    if len(label_set) < 2:
        raise ValueError(f"{corpus}: need at least two classes, found {label_set}"
                         + (f" ({len(rejected)} rows rejected: {rejects_path})" if rejected
                            else ""))
    given = given_indices(rows, label_set)
    small = small_classes(given, len(label_set), config.min_class_rows)
    warnings = [w for w in (
        tally.label_field_warning(),
        small_classes_text(small, given, label_set, config.min_class_rows),
    ) if w]
    for warning in warnings:
        if log:
            log(f"warning: {warning}")
    texts = [r.text for r in rows]
    pretrained = load_pretrained(encoder)
    separate = (embedding_model is not None
                and resolve_encoder(embedding_model)[0] != pretrained.name)
    embedder = load_pretrained(embedding_model, role="embedding model") if separate else None
    result = train_sidyp(
        texts, given, len(label_set), pretrained, config, progress, log, torch_device,
        work_dir=Path(out).absolute().parent, embedder=embedder,
    )

    start = time.perf_counter()
    fit = fit_training_rows(result, texts, given, label_set, config, small, torch_device)
    calibration, predictions = fit.calibration, fit.predictions
    result.timings["predict"] = time.perf_counter() - start

    summary = TrainSummary(
        bundle=str(out),
        rows=len(rows),
        rejected=len(rejected),
        unlabeled=int((given < 0).sum()),
        classes=len(label_set),
        noise_ratio=result.noise_ratio,
        noise_ratio_estimated=result.noise_ratio_estimated,
        noise_ratio_at_clip=result.noise_ratio_estimated and noise_ratio_at_clip(
            result.noise_ratio),
        prior_kinds=kind_counts(result.prior_kind),
        labels_changed=sum(p["is_label_issue"] for p in predictions),
        best_diffusion_epoch=result.best_diffusion_epoch,
        temperature=calibration.temperature,
        class_noise_ratios=[round(float(r), 6) for r in fit.class_noise_ratios],
        calibration_noise_ratio=fit.calibration_noise_ratio,
        noise_ratio_interval=(None if fit.noise_ratio_interval is None else
                              tuple(round(x, 4) for x in fit.noise_ratio_interval)),
        label_bias=[float(b) for b in calibration.label_bias]
        if calibration.label_bias is not None else [],
        label_shares=[float(x) for x in calibration.label_shares]
        if calibration.label_shares is not None else None,
        seconds={k: round(v, 2) for k, v in result.timings.items()},
        refined_out=str(refined_out) if refined_out else None,
        rejects=str(rejects_path) if rejected else None,
        corpus=_file_identity(corpus),
        reject_reasons=tally.reasons,
        small_classes=[label_set[c] for c in small],
        warnings=warnings,
        refinement=fit.refinement,
    )
    # The calibration is the bundle's own record (calibration.json), not the summary's.
    training_record = {k: v for k, v in summary.to_dict().items()
                       if k not in ("label_bias", "label_shares")}
    save_trained(out, result, label_set, config, pretrained,
                 {**training_record, "history": result.history}, calibration,
                 overwrite=overwrite, embedder=embedder)
    if export:
        from .export.onnx import export_onnx

        export_onnx(out, calibration_texts=calibration_sample([row.text for row in rows]))
    if refined_out and len(rows) == usable:
        _write_records(Path(refined_out), (
            {**row.record, **extra} for row, extra in zip(rows, predictions, strict=True)))
    elif refined_out:
        trained = {row.line_no: extra for row, extra in zip(rows, predictions, strict=True)}
        refined = refine(corpus, out, refined_out, backend="onnx" if export else "torch",
                         fields=fields, rejects=rejects_path, known=trained,
                         input_format=input_format)
        summary.refined_as_new = refined.refined - len(rows)
    summary.predictions = {row.line_no: extra for row, extra in zip(rows, predictions,
                                                                    strict=True)}
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


def _training_rows(
    corpus: str | Path,
    fields: FieldNames,
    labels: Sequence[str] | None,
    strict: bool,
    max_rows: int | None,
    seed: int,
    tally: CorpusTally,
    input_format: str | None = None,
) -> tuple[list[Row], list[Reject], list[str], int]:
    """(training rows, rejects, label set, usable rows in the corpus). Past ``max_rows`` (0 or
    None: no limit) the training rows are a sample drawn per LLM label
    (``sampling.stratified_sample``): a first pass keeps only each row's label code, a second
    reads the chosen rows."""
    from .sampling import stratified_sample

    if not max_rows or str(corpus) == "-":  # stdin cannot be read twice: sample in memory
        rows, rejected = _split_rows(
            _tallied(iter_corpus(corpus, fields, labels, strict=strict,
                                 input_format=input_format), tally)
        )
        label_set = list(labels) if labels else label_set_from_rows(rows)
        usable = len(rows)
        if max_rows and usable > max_rows:
            index = {label: i for i, label in enumerate(label_set)}
            codes = np.array([index.get(r.label, -1) if r.label is not None else -1
                              for r in rows], dtype=np.int64)
            rows = [rows[i] for i in stratified_sample(codes, max_rows, seed)]
        return rows, rejected, label_set, usable
    seen: dict[str, int] = {}
    codes: list[int] = []
    lines: list[int] = []
    rejected = []
    for item in _tallied(iter_corpus(corpus, fields, labels, strict=strict,
                                     input_format=input_format), tally):
        if isinstance(item, Reject):
            rejected.append(item)
            continue
        codes.append(-1 if item.label is None else seen.setdefault(item.label, len(seen)))
        lines.append(item.line_no)
    chosen = stratified_sample(np.asarray(codes, dtype=np.int64), max_rows, seed)
    wanted = set(np.asarray(lines, dtype=np.int64)[chosen].tolist())
    rows = [
        item for item in iter_corpus(corpus, fields, labels, input_format=input_format)
        if isinstance(item, Row) and item.line_no in wanted
    ]
    if labels:
        return rows, rejected, list(labels), len(codes)
    label_set = label_set_from_labels(list(seen))
    if label_set and isinstance(label_set[0], str):
        for row in rows:  # as label_set_from_rows does: one type for the set and the rows
            row.label = None if row.label is None else str(row.label)
    return rows, rejected, label_set, len(codes)


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

    ``out`` ending in ``.parquet`` writes Parquet, ``-`` writes JSONL to stdout, anything else
    JSONL. Memory stays bounded by the chunk size. A killed run continues with ``resume=True``
    (with nothing to resume, it starts from the beginning and says so in ``notes``).
    The corpus is JSONL, CSV, TSV, Parquet or a ``datasets`` directory (``input_format``, else
    from its name). ``out`` ending in ``.parquet``, ``.csv`` or ``.tsv`` writes that format.
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
            "corpus": _file_identity(corpus),
            **({"input_format": kind} if kind != "jsonl" else {}),
            "bundle": file_digest(bundle),
            "backend": backend,
            "precision": runtime.precision,
            "chunk_size": chunk_size,
            "fields": asdict(fields),
            "rejects": str(Path(rejects_path).absolute()),
        }
        sink = ResumableOutput(Path(out), rejects_path, identity, resume)
    notes = [sink.notice] if getattr(sink, "notice", None) else []
    done_lines = sink.progress.lines
    start, refined_before = time.perf_counter(), sink.progress.refined
    bar = tqdm(total=count_rows(corpus, kind), initial=done_lines, desc="refine", unit="rows",
               disable=not progress)
    rows: list[Row] = []
    rejected: list[dict] = []
    line = done_lines
    tally = CorpusTally(fields.label)

    def flush() -> None:
        sink.write_chunk(refine_chunk(rows, loaded, runtime, known), rejected, line)
        bar.update(len(rows) + len(rejected))
        rows.clear()
        rejected.clear()

    try:
        for item in iter_corpus(corpus, fields, loaded.labels, strict=strict, input_format=kind):
            if item.line_no <= done_lines:
                continue
            line = item.line_no
            tally.observe(item)
            if isinstance(item, Reject):
                rejected.append(item.to_json())
            else:
                rows.append(item)
            if len(rows) >= chunk_size:
                flush()
        if rows or rejected:
            flush()
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


@dataclass
class CorpusSummary:
    """``refine CORPUS`` without a bundle: what training did and what refining did."""

    model: str
    trained: TrainSummary | None  # None: a finished training was reused (--resume)
    refined: RefineSummary

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "reused_model": self.trained is None,
                "train": self.trained.to_dict() if self.trained else None,
                "refine": self.refined.to_dict()}

    def to_text(self) -> str:
        r = self.refined
        trained = self.trained.rows if self.trained else None
        lines = [self.trained.to_text() if self.trained else
                 f"model             {self.model} (reused: its training had finished)"]
        lines.append(r.to_text())
        if trained is not None and r.refined > trained:
            lines.append(f"rows              {trained} trained on, {r.refined - trained} refined "
                         "as new rows")
        lines.append(f"model kept in     {self.model} (refine new rows: sidyp-prod refine NEW "
                     f"--model {self.model})")
        return "\n".join(lines)


def default_refined_path(corpus: str | Path) -> Path:
    """'data/corpus.jsonl' -> 'data/corpus.refined.jsonl' (beside the input)."""
    return _beside(corpus, ".refined.jsonl")


def default_model_path(corpus: str | Path) -> Path:
    """'data/corpus.jsonl' -> 'data/corpus.sidyp-model/' (beside the input)."""
    return _beside(corpus, ".sidyp-model")


def _beside(corpus: str | Path, suffix: str) -> Path:
    path = Path(corpus)
    name = path.name
    for ext in (".gz", ".zst"):
        name = name.removesuffix(ext)
    return path.with_name((Path(name).stem if Path(name).suffix else name) + suffix)


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
) -> CorpusSummary:
    """Train on a corpus and write every row's refined label: the one-command path.

    The training rows (a sample of ``config.max_train_rows`` drawn per LLM label past that
    size) get their labels from classifiers that never saw them, as ``train --refined-out``
    gives them; the rest stream through the saved bundle as new rows. The bundle is kept at
    ``save_model`` (default beside the corpus). With ``resume`` a finished training is reused
    (its bundle verified, trained on this very file) and a killed refine phase continues.
    """
    if str(corpus) == "-":
        raise ValueError("refine without --model trains first: give the corpus as a file")
    out = Path(out) if out is not None else default_refined_path(corpus)
    model_dir = Path(save_model) if save_model is not None else default_model_path(corpus)
    rejects_path = Path(rejects) if rejects else default_rejects_path(out)
    # The training rows' fields, kept beside the output until it is finished.
    known_path = out.with_name(out.name + ".training.jsonl")
    trained: TrainSummary | None = None
    known = _reusable_training(model_dir, corpus, known_path) if resume else None
    if known is None:
        if model_dir.exists() and not (resume or overwrite):
            raise FileExistsError(
                f"{model_dir} exists: pass --resume to reuse a finished training of this "
                "corpus, --overwrite to replace it, or --save-model DIR"
            )
        trained = train(corpus, model_dir, config, fields=fields, labels=labels,
                        encoder=encoder, embedding_model=embedding_model,
                        rejects=rejects_path, strict=strict,
                        overwrite=True, progress=progress, log=log, device=device,
                        input_format=input_format)
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


def _reusable_training(
    model_dir: Path, corpus: str | Path, known_path: Path
) -> dict[int, dict] | None:
    """The training rows' fields of a finished training of this very corpus file, or None."""
    from .bundle import BundleError

    if not (model_dir / "manifest.json").is_file() or not known_path.is_file():
        return None
    try:
        bundle = load_bundle(model_dir)  # verifies every file's hash
    except BundleError:
        return None
    if bundle.manifest.get("training", {}).get("corpus") != _file_identity(corpus):
        return None
    known = {}
    with known_path.open(encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            known[int(item["line"])] = item["fields"]
    return known


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
