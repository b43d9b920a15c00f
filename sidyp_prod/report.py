"""``sidyp-prod report``: one self-contained HTML page of a refined corpus's label issues.

The page is built from one streamed pass over the refined rows (:func:`read_located_records`):
running counts for the summary, the given -> refined flows, the score histograms and, with gold
labels, the accuracy and calibration views; a bounded heap keeps the ``max_rows`` issues whose
LLM label is most likely wrong (lowest ``label_score``). Memory does not grow with the corpus.
With the bundle (``model``), the shown issues are encoded again and their nearest training rows
found; their texts come from a second streamed pass over the training corpus (``train_corpus``,
or the refined file itself when it is the bundle's own ``--refined-out``).

The page embeds its styles, script and data (no network: its Content-Security-Policy allows
nothing to be fetched) and opens from disk in any browser.
"""

from __future__ import annotations

import heapq
import html
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import AtomicWriter, FieldNames, Row, iter_corpus
from .evaluate import label_text, read_located_records, reliability_bins
from .review_exports import ArgillaWriter, LabelStudioWriter, label_studio_config

__all__ = ["ReportSummary", "build_report", "default_report_path"]

DEFAULT_MAX_ROWS = 1000
HIST_BINS = 20
CALIBRATION_BINS = 15
GOLD_CHUNK = 4096
TEMPLATE = "report_page.html"


@dataclass
class ReportSummary:
    path: str
    rows: int
    issues: int
    shown: int
    bytes: int
    seconds: float
    neighbours: bool
    label_studio: str | None = None
    argilla: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        text = (
            f"report of {self.rows} rows: {self.issues} label issues, {self.shown} shown "
            f"({self.bytes / 1e6:.2f} MB, {self.seconds:.1f} s) -> {self.path}"
        )
        for name, path in (("Label Studio tasks", self.label_studio),
                           ("Argilla records", self.argilla)):
            if path:
                text += f"\n{name}: {path}"
        return text


def default_report_path(refined: str | Path) -> Path:
    """'out.jsonl' -> 'out.report.html' next to it; a directory 'out/' -> 'out.report.html'."""
    refined = Path(refined)
    name = refined.name[: -len(".gz")] if refined.name.endswith(".gz") else refined.name
    stem = Path(name).stem if Path(name).suffix and not refined.is_dir() else name
    return refined.with_name(f"{stem}.report.html")


def _fail(where: str, name: str, problem: str) -> ValueError:
    return ValueError(f"{where}: field {name!r}: {problem}")


def _label(rec: dict[str, Any], name: str, where: str, required: bool) -> str | None:
    value = label_text(rec.get(name), where, name)
    if value is None and required:
        raise _fail(where, name, "missing or null (is this refine's output?)")
    return value


def _probability(rec: dict[str, Any], name: str, where: str) -> float:
    value = rec.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise _fail(where, name, f"expected a number in [0, 1], got {value!r}")
    return float(value)


def _candidates(rec: dict[str, Any], where: str) -> dict[str, float]:
    value = rec.get("candidates")
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(w, (int, float)) and not isinstance(w, bool) for w in value.values()
    ):
        raise _fail(where, "candidates", "expected an object of label -> weight")
    return {str(k): float(w) for k, w in value.items()}


@dataclass
class _Refined:
    """One refined row, checked."""

    where: str
    given: str | None
    predicted: str
    label_score: float | None
    confidence: float
    is_issue: bool
    candidates: dict[str, float]

    @classmethod
    def parse(cls, rec: dict[str, Any], where: str) -> _Refined:
        if "given_label" not in rec:
            raise _fail(where, "given_label", "missing (is this refine's output?)")
        given = _label(rec, "given_label", where, required=False)
        predicted = _label(rec, "predicted_label", where, required=True)
        assert predicted is not None
        score = None if given is None else _probability(rec, "label_score", where)
        issue = rec.get("is_label_issue")
        if not isinstance(issue, bool):
            raise _fail(where, "is_label_issue", f"expected true or false, got {issue!r}")
        return cls(where, given, predicted, score, _probability(rec, "confidence", where), issue,
                   _candidates(rec, where))


def _histogram_bin(value: float) -> int:
    return min(int(value * HIST_BINS), HIST_BINS - 1)


@dataclass
class _GoldTally:
    """Accuracy and calibration against gold labels, accumulated chunk by chunk."""

    rows: int = 0
    given_hits: int = 0
    refined_hits: int = 0
    changed: int = 0
    fixed: int = 0
    broken: int = 0
    pairs: Counter = field(default_factory=Counter)  # (gold, refined) -> rows
    bins: list[dict[str, float]] = field(default_factory=lambda: [
        {"count": 0, "hits": 0.0, "confidence": 0.0} for _ in range(CALIBRATION_BINS)])
    _conf: list[float] = field(default_factory=list)
    _correct: list[bool] = field(default_factory=list)

    def add(self, gold: str, row: _Refined) -> None:
        self.rows += 1
        self.given_hits += row.given == gold
        self.refined_hits += row.predicted == gold
        # As evaluate counts them: rows the LLM left unlabeled were filled, not changed.
        if row.given is not None and row.given != row.predicted:
            self.changed += 1
            self.fixed += row.predicted == gold
            self.broken += row.given == gold and row.predicted != gold
        self.pairs[gold, row.predicted] += 1
        self._conf.append(row.confidence)
        self._correct.append(row.predicted == gold)
        if len(self._conf) >= GOLD_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if not self._conf:
            return
        chunk = reliability_bins(np.array(self._conf), np.array(self._correct), CALIBRATION_BINS)
        for total, b in zip(self.bins, chunk, strict=True):
            if b["count"]:
                total["count"] += b["count"]
                total["hits"] += b["accuracy"] * b["count"]
                total["confidence"] += b["mean_confidence"] * b["count"]
        self._conf.clear()
        self._correct.clear()

    def view(self, labels: Sequence[str]) -> dict[str, Any] | None:
        self._flush()
        if not self.rows:
            return None
        reliability = [
            {"lo": b / CALIBRATION_BINS, "hi": (b + 1) / CALIBRATION_BINS,
             "count": int(x["count"]),
             "accuracy": x["hits"] / x["count"] if x["count"] else None,
             "mean_confidence": x["confidence"] / x["count"] if x["count"] else None}
            for b, x in enumerate(self.bins)
        ]
        ece = sum(abs(x["hits"] - x["confidence"]) for x in self.bins) / self.rows
        per_class = []
        for lab in labels:
            tp = self.pairs[lab, lab]
            predicted = sum(n for (_, p), n in self.pairs.items() if p == lab)
            support = sum(n for (g, _), n in self.pairs.items() if g == lab)
            precision = tp / predicted if predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_class.append({"label": lab, "precision": precision, "recall": recall, "f1": f1,
                              "support": support})
        return {
            "rows": self.rows,
            "given_accuracy": self.given_hits / self.rows,
            "refined_accuracy": self.refined_hits / self.rows,
            "changed": self.changed, "fixed": self.fixed, "broken": self.broken,
            "ece": ece, "reliability": reliability, "per_class": per_class,
            "confusion": [[self.pairs[g, p] for p in labels] for g in labels],
        }


@dataclass
class _Tally:
    """Running counts of the whole file: everything the page shows except the issue rows."""

    rows: int = 0
    unlabeled: int = 0
    changed: int = 0
    flows: Counter = field(default_factory=Counter)  # (given or None, predicted) -> rows
    given_rows: Counter = field(default_factory=Counter)
    given_score: Counter = field(default_factory=Counter)  # given -> sum of label_score
    given_flagged: Counter = field(default_factory=Counter)
    score_hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)
    confidence_hist: list[int] = field(default_factory=lambda: [0] * HIST_BINS)
    gold_rows: int = 0

    def add(self, row: _Refined) -> None:
        self.rows += 1
        self.changed += row.is_issue
        self.flows[row.given, row.predicted] += 1
        self.confidence_hist[_histogram_bin(row.confidence)] += 1
        if row.given is None:
            self.unlabeled += 1
            return
        assert row.label_score is not None
        self.given_rows[row.given] += 1
        self.given_score[row.given] += row.label_score
        self.given_flagged[row.given] += row.is_issue
        self.score_hist[_histogram_bin(row.label_score)] += 1

    def labels(self, known: Sequence[str] | None) -> list[str]:
        seen = {lab for pair in self.flows for lab in pair if lab is not None}
        if known is None:
            return sorted(seen)
        return list(known) + sorted(seen - set(known))

    def classes(self, labels: Sequence[str], bundle_noise: Sequence[float] | None) -> list[dict]:
        out = []
        for i, lab in enumerate(labels):
            n = self.given_rows[lab]
            out.append({
                "label": lab,
                "given": n,
                "refined": sum(c for (_, p), c in self.flows.items() if p == lab),
                "flagged": self.given_flagged[lab],
                "expected_noise": 1.0 - self.given_score[lab] / n if n else None,
                "training_noise": (float(bundle_noise[i])
                                   if bundle_noise is not None and i < len(bundle_noise)
                                   else None),
            })
        return out


def _text(rec: dict[str, Any], fields: FieldNames, where: str) -> str:
    text = rec.get(fields.text)
    if not isinstance(text, str):
        raise _fail(where, fields.text, f"expected the row's text (a string), got {text!r}; "
                    "--text-field names it")
    return text


class _TopIssues:
    """The ``size`` flagged rows with the lowest label_score (ties: the earlier row)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._heap: list[tuple[float, int, dict[str, Any]]] = []

    def wants(self, score: float, row_no: int) -> bool:
        """Would a row with this score and number be kept (now)?"""
        if len(self._heap) < self.size:
            return True
        return bool(self.size) and (-score, -row_no) > self._heap[0][:2]

    def add(self, score: float, row_no: int, item: dict[str, Any]) -> None:
        """Keep ``item`` (after :meth:`wants` said so), dropping the worst kept one if full."""
        entry = (-score, -row_no, item)
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, entry)
        else:
            heapq.heapreplace(self._heap, entry)

    def ranked(self) -> list[dict[str, Any]]:
        return [item for *_, item in sorted(self._heap, key=lambda e: (-e[0], -e[1]))]


@dataclass
class _Bundle:
    """What the page shows of the model, and what the neighbour search needs."""

    directory: Path
    info: dict[str, Any]
    labels: list[str]
    class_noise: list[float] | None
    reference_labels: np.ndarray
    reference_clean: np.ndarray  # (M, N) bool
    # Each reference row's place among the training corpus's usable rows (0-based); bundles
    # from before it was recorded trained on all of them, in order.
    reference_rows: np.ndarray

    @classmethod
    def load(cls, directory: str | Path) -> _Bundle:
        from .bundle import file_digest, load_bundle
        from .model_io import REFERENCE_FILE

        bundle = load_bundle(directory)
        manifest = bundle.manifest
        training = manifest.get("training", {})
        reference = bundle.arrays(REFERENCE_FILE)
        info = {
            "bundle": str(bundle.directory),
            "bundle_id": file_digest(bundle)[:16],
            "encoder": manifest.get("encoder", {}).get("name"),
            "version": manifest.get("sidyp_prod_version"),
            "settings": manifest.get("config", {}),
            "training_rows": training.get("rows"),
            "noise_ratio": training.get("noise_ratio"),
            "noise_ratio_interval": training.get("noise_ratio_interval"),
            "training_seconds": training.get("seconds", {}),
        }
        labels = np.asarray(reference["labels"])
        rows = (np.asarray(reference["rows"]) if "rows" in reference
                else np.arange(len(labels)))
        return cls(bundle.directory, info, list(manifest["labels"]),
                   training.get("class_noise_ratios"), labels,
                   np.asarray(reference["clean"]).astype(bool), rows)

    def expected_labels(self) -> dict[int, int]:
        """Place among the training corpus's usable rows -> the label code training read."""
        return {int(p): int(code) for p, code in zip(self.reference_rows, self.reference_labels,
                                                     strict=True)}

    @cached_property
    def _codes(self) -> dict[Any, int]:
        return {label: code for code, label in enumerate(self.labels)}

    def label_code(self, label: Any) -> int:
        """A label's code as the reference set stores it: -1 for none, -2 outside the set."""
        if label is None:
            return -1
        return self._codes.get(label, -2)


class _TrainingOrder:
    """Does the refined file hold the bundle's training rows at their places (its
    ``--refined-out``, or the whole training corpus refined)? Then the neighbours' texts can
    be read from it."""

    def __init__(self, bundle: _Bundle) -> None:
        self.bundle = bundle
        self.expected = bundle.expected_labels()
        self.rows = 0
        self.matched = 0
        self.same = True

    def add(self, given: str | None) -> None:
        want = self.expected.get(self.rows)
        if self.same and want is not None:
            self.same = self.bundle.label_code(given) == want
            self.matched += 1
        self.rows += 1

    def holds(self) -> bool:
        return self.same and self.matched == len(self.expected)


def _embed(bundle_dir: Path, texts: list[str]) -> np.ndarray:
    """The bundle's sentence embeddings of ``texts`` (ONNX graphs if exported, else PyTorch)."""
    from .backends import load_backend
    from .bundle import load_bundle
    from .model_io import load_model
    from .pipeline import sentence_embeddings

    bundle = load_bundle(bundle_dir)
    backend = load_backend(bundle, "onnx" if "encoder.onnx" in bundle.files else "torch")
    return sentence_embeddings(load_model(bundle), backend, texts)


def _training_texts(source: Path, wanted: set[int], fields: FieldNames,
                    bundle: _Bundle, refined: bool) -> dict[int, str]:
    """Texts of the training rows at the places in ``wanted`` (0-based, among the training
    corpus's usable rows), read in one streamed pass: from the refined file itself, or from
    the training corpus (its usable rows, as training read them, checked against the labels
    training read at the bundle's places)."""
    texts: dict[int, str] = {}
    if refined:
        for i, (where, rec) in enumerate(read_located_records(source)):
            if i in wanted:
                texts[i] = _text(rec, fields, where)
        return texts
    expected = bundle.expected_labels()
    i = 0
    for item in iter_corpus(source, fields, list(bundle.labels)):
        if isinstance(item, Row):
            want = expected.pop(i, None)
            if want is not None and bundle.label_code(item.label) != want:
                raise ValueError(
                    f"{source}, line {item.line_no}: label {item.label!r}, but training read "
                    f"{_label_name(bundle, want)!r} there: {NOT_THE_TRAINING_CORPUS}")
            if i in wanted:
                texts[i] = item.text
            i += 1
    if expected:
        raise ValueError(f"{source}: {i} rows with a valid text and label, but the bundle was "
                         f"trained on row {max(expected) + 1}: {NOT_THE_TRAINING_CORPUS}")
    return texts


NOT_THE_TRAINING_CORPUS = ("--train-corpus must be the corpus the bundle was trained on (and "
                           "--text-field/--label-field as training read it)")


def _label_name(bundle: _Bundle, code: int) -> str | None:
    return bundle.labels[code] if code >= 0 else None


def _attach_neighbours(issues: list[dict[str, Any]], bundle: _Bundle, k: int,
                       source: Path | None, source_is_refined: bool,
                       fields: FieldNames) -> str:
    """Add each shown issue's ``k`` nearest training rows; say where their texts came from."""
    from .neighbors import NeighborIndex

    if not issues or k <= 0:
        return "none"
    from .bundle import load_bundle
    from .model_io import REFERENCE_FILE

    reference = load_bundle(bundle.directory).arrays(REFERENCE_FILE)
    index = NeighborIndex(reference["embeddings"], reference["labels"], use_gpu=False)
    queries = _embed(bundle.directory, [item["text"] for item in issues])
    # The refined file of the training corpus itself: a row's nearest training row is itself.
    distances, ids = index.nearest(queries, k + source_is_refined)
    places = bundle.reference_rows
    if source_is_refined:
        own = np.array([item["row"] - 1 for item in issues])[:, None]
        found = np.where(ids >= 0, places[np.maximum(ids, 0)], -1)
        keep = np.argsort(found == own, axis=1, kind="stable")[:, :k]
        distances = np.take_along_axis(distances, keep, axis=1)
        ids = np.take_along_axis(ids, keep, axis=1)
    wanted = {int(places[i]) for i in ids.reshape(-1) if i >= 0}
    texts = (_training_texts(source, wanted, fields, bundle, source_is_refined)
             if source is not None else {})
    clean_votes = bundle.reference_clean.sum(axis=0)
    branches = len(bundle.reference_clean)
    for item, row_d, row_i in zip(issues, distances, ids, strict=True):
        item["neighbours"] = [
            {
                "row": int(places[i]) + 1,
                "label": _label_name(bundle, int(bundle.reference_labels[i])),
                "distance": round(float(d), 4),
                "clean": f"{int(clean_votes[i])}/{branches}",
                "text": texts.get(int(places[i])),
            }
            for d, i in zip(row_d, row_i, strict=True) if i >= 0
        ]
    if source is None:
        return "labels"
    return "texts"


def _page(data: dict[str, Any]) -> str:
    template = resources.files("sidyp_prod").joinpath(TEMPLATE).read_text(encoding="utf-8")
    # Inside <script>: no "</" (or "<!--") may close it early, whatever the texts hold.
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    title = html.escape(f"SiDyP label review: {data['summary']['source']}")
    before_title, rest = template.split("{{TITLE}}")
    before_data, after_data = rest.split("{{DATA}}")
    return before_title + title + before_data + payload + after_data


def _issues(path: Path, fields: FieldNames, gold_field: str | None, tally: _Tally,
            gold: _GoldTally, top: _TopIssues, order: _TrainingOrder | None,
            exports: Sequence[LabelStudioWriter | ArgillaWriter]) -> None:
    """The streamed pass: every row into the tallies, the flagged ones offered to the heap and
    written to the exports."""
    for row_no, (where, rec) in enumerate(read_located_records(path), start=1):
        row = _Refined.parse(rec, where)
        tally.add(row)
        if order is not None:
            order.add(row.given)
        gold_label = _label(rec, gold_field, where, required=False) if gold_field else None
        if gold_label is not None:
            gold.add(gold_label, row)
        if not row.is_issue:
            continue
        text = _text(rec, fields, where)
        row_id = rec.get(fields.id, row_no)
        assert row.label_score is not None
        if top.wants(row.label_score, row_no):
            top.add(row.label_score, row_no, {
                "row": row_no, "id": row_id, "text": text, "given": row.given,
                "suggested": row.predicted, "label_score": row.label_score,
                "confidence": row.confidence, "candidates": row.candidates, "gold": gold_label,
            })
        for export in exports:
            export.add(rec, text, row_id)


def _open_exports(label_studio: Path | None, argilla: Path | None,
                  model_version: str) -> Iterator[LabelStudioWriter | ArgillaWriter]:
    if label_studio is not None:
        yield LabelStudioWriter(label_studio, model_version)
    if argilla is not None:
        yield ArgillaWriter(argilla)


def build_report(
    refined: str | Path,
    out: str | Path,
    *,
    model: str | Path | None = None,
    train_corpus: str | Path | None = None,
    fields: FieldNames | None = None,
    gold_field: str | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    neighbours: int = 5,
    label_studio: str | Path | None = None,
    argilla: str | Path | None = None,
    run: dict[str, Any] | None = None,
) -> ReportSummary:
    """Write the review page of a refined corpus (JSONL, CSV, TSV, Parquet or a ray output
    directory).

    ``model``: the bundle that refined it (its id, encoder and settings on the page, and each
    shown issue's nearest training rows); ``train_corpus``: the corpus it was trained on, for
    those rows' texts. ``run``: facts about the refine run that wrote the file (shown as they
    are). ``label_studio`` / ``argilla``: also write every flagged row in those formats.
    """
    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    start = time.perf_counter()
    refined = Path(refined)
    fields = fields or FieldNames()
    bundle = _Bundle.load(model) if model is not None else None
    order = _TrainingOrder(bundle) if bundle is not None and train_corpus is None else None
    tally, gold, top = _Tally(), _GoldTally(), _TopIssues(max_rows)
    version = f"sidyp-prod {bundle.info['bundle_id']}" if bundle else "sidyp-prod"
    exports = list(_open_exports(
        Path(label_studio) if label_studio else None, Path(argilla) if argilla else None, version))
    try:
        _issues(refined, fields, gold_field, tally, gold, top, order, exports)
        if gold_field and not gold.rows:  # a misspelt field would hide the gold views silently
            raise ValueError(f"--gold-field {gold_field}: no row of {refined} has a gold label "
                             "in that field")
    except BaseException as exc:
        for export in exports:
            export.__exit__(type(exc), exc, exc.__traceback__)
        raise
    for export in exports:
        export.__exit__(None, None, None)
    issues = top.ranked()
    labels = tally.labels(bundle.labels if bundle else None)
    neighbour_texts = "no bundle (--model)"
    if bundle is not None:
        if train_corpus is not None:
            source, is_refined = Path(train_corpus), False
        elif order is not None and order.holds():
            source, is_refined = refined, True
        else:
            source, is_refined = None, False
        neighbour_texts = _attach_neighbours(issues, bundle, neighbours, source, is_refined,
                                             fields)
    summary = {
        "source": refined.name,
        "path": str(refined.absolute()),
        "rows": tally.rows,
        "classes": len(labels),
        "unlabeled": tally.unlabeled,
        "changed": tally.changed,
        "issues": tally.changed,
        "shown": len(issues),
        "max_rows": max_rows,
        "model": bundle.info if bundle else None,
        "run": run,
        "neighbours": neighbour_texts,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    data = {
        "summary": summary,
        "labels": labels,
        "classes": tally.classes(labels, bundle.class_noise if bundle else None),
        "flows": [[tally.flows[g, p] for p in labels] for g in [*labels, None]],
        "score_hist": tally.score_hist,
        "confidence_hist": tally.confidence_hist,
        "gold": gold.view(labels) if gold_field else None,
        "gold_field": gold_field,
        "issues": issues,
        "label_studio_config": label_studio_config(labels),
    }
    summary["build_seconds"] = round(time.perf_counter() - start, 3)
    page = _page(data)
    with AtomicWriter(out) as writer:
        writer.write(page)
    return ReportSummary(
        str(out), tally.rows, tally.changed, len(issues), len(page.encode("utf-8")),
        time.perf_counter() - start, neighbour_texts == "texts",
        str(label_studio) if label_studio else None, str(argilla) if argilla else None,
    )
