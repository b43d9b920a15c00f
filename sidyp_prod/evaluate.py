"""Score refined labels against human gold labels: accuracy, calibration, per-class, plots."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import read_raw_lines
from .readers import detect_format

__all__ = [
    "EvaluationReport",
    "accuracy",
    "confusion_matrix",
    "evaluate_located",
    "evaluate_records",
    "expected_calibration_error",
    "label_text",
    "per_class_report",
    "read_located_records",
    "read_records",
    "reliability_bins",
    "write_plots",
]


def _check_lengths(pred: Sequence[str | None], gold: Sequence[str]) -> None:
    if len(pred) != len(gold):
        raise ValueError(f"pred and gold differ in length: {len(pred)} != {len(gold)}")


def accuracy(pred: Sequence[str | None], gold: Sequence[str]) -> float:
    """Fraction of rows where pred equals gold; a None prediction counts as wrong."""
    _check_lengths(pred, gold)
    if len(gold) == 0:
        raise ValueError("accuracy of an empty sequence is undefined")
    hits = sum(p is not None and p == g for p, g in zip(pred, gold, strict=True))
    return hits / len(gold)


def _calibration_inputs(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate inputs; return confidences, correctness (float) and each row's bin index."""
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    corr = np.asarray(correct).reshape(-1).astype(np.float64)
    if conf.shape != corr.shape:
        raise ValueError(f"confidence and correct differ in length: {conf.size} != {corr.size}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if not np.all(np.isfinite(conf)) or np.any((conf < 0.0) | (conf > 1.0)):
        raise ValueError("confidence values must be finite and within [0, 1]")
    # i / n (not linspace) so that edges equal their decimal literals, e.g. 3/5 == 0.6 exactly,
    # and a confidence of exactly 0.6 falls in the bin that starts at 0.6.
    edges = np.arange(n_bins + 1) / n_bins
    idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    return conf, corr, idx


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> list[dict[str, Any]]:
    """Equal-width bins on [0, 1] (last one closed): lo, hi, count, accuracy, mean_confidence.

    Empty bins have accuracy and mean_confidence None.
    """
    conf, corr, idx = _calibration_inputs(confidence, correct, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    hit_sums = np.bincount(idx, weights=corr, minlength=n_bins)
    conf_sums = np.bincount(idx, weights=conf, minlength=n_bins)
    bins: list[dict[str, Any]] = []
    for b in range(n_bins):
        n = int(counts[b])
        bins.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "count": n,
                "accuracy": float(hit_sums[b] / n) if n else None,
                "mean_confidence": float(conf_sums[b] / n) if n else None,
            }
        )
    return bins


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> float:
    """Sum over equal-width bins of (bin count / N) * |bin accuracy - bin mean confidence|."""
    bins = reliability_bins(confidence, correct, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        raise ValueError("expected calibration error of an empty sample is undefined")
    gaps = [b["count"] * abs(b["accuracy"] - b["mean_confidence"]) for b in bins if b["count"]]
    return float(sum(gaps) / total)


def confusion_matrix(
    pred: Sequence[str | None], gold: Sequence[str], labels: Sequence[str]
) -> np.ndarray:
    """Counts with rows = gold label, columns = predicted label, both in `labels` order.

    Predictions outside `labels` (including None) are left out of the matrix; a gold label
    outside `labels` is an error.
    """
    _check_lengths(pred, gold)
    index = {lab: i for i, lab in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError("labels contain duplicates")
    mat = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for p, g in zip(pred, gold, strict=True):
        if g not in index:
            raise ValueError(f"gold label {g!r} is not in labels {list(labels)!r}")
        if p in index:
            mat[index[g], index[p]] += 1
    return mat


def per_class_report(
    pred: Sequence[str | None], gold: Sequence[str], labels: Sequence[str]
) -> list[dict[str, Any]]:
    """Per label: precision, recall, f1 and support (number of gold rows); 0.0 where undefined."""
    mat = confusion_matrix(pred, gold, labels)
    tp = np.diag(mat)
    predicted = mat.sum(axis=0)
    # Support counts every gold row, also those whose prediction fell outside `labels`.
    support = np.array([sum(g == lab for g in gold) for lab in labels], dtype=np.int64)
    rows: list[dict[str, Any]] = []
    for i, lab in enumerate(labels):
        precision = float(tp[i] / predicted[i]) if predicted[i] else 0.0
        recall = float(tp[i] / support[i]) if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "label": lab,
                "precision": precision,
                "recall": recall,
                "f1": float(f1),
                "support": int(support[i]),
            }
        )
    return rows


@dataclass
class EvaluationReport:
    """Scores of a refined-label file against its gold labels.

    `changed`, `fixed` and `broken` count scored rows with an LLM label only: `changed` is what
    refine calls "labels changed" (the LLM label replaced, `is_label_issue`). A row the LLM left
    unlabeled is `filled` instead (it gained a label), and `filled_right` when that label is right.
    """

    n_rows: int
    n_scored: int
    labels: list[str]
    given_accuracy: float
    refined_accuracy: float
    changed: int
    fixed: int
    broken: int
    ece: float
    filled: int = 0
    filled_right: int = 0
    reliability: list[dict[str, Any]] = field(default_factory=list)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict."""
        return asdict(self)

    def to_text(self) -> str:
        """Human-readable summary."""
        delta = self.refined_accuracy - self.given_accuracy
        lines = [
            f"rows: {self.n_rows}  scored (with gold): {self.n_scored}",
            f"given accuracy:   {self.given_accuracy:.4f}",
            f"refined accuracy: {self.refined_accuracy:.4f}  ({delta:+.4f})",
            f"changed: {self.changed} (LLM label replaced)  fixed: {self.fixed}  "
            f"broken: {self.broken}",
            f"filled: {self.filled} (no LLM label; given one)  right: {self.filled_right}",
            f"ECE (refined confidence): {self.ece:.4f}",
            "",
            "per class:",
        ]
        name_w = max([len("label"), *(len(lab) for lab in self.labels)])
        lines.append(
            f"  {'label':<{name_w}}  {'precision':>9}  {'recall':>6}  {'f1':>6}  {'support':>7}"
        )
        for row in self.per_class:
            lines.append(
                f"  {row['label']:<{name_w}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}"
                f"  {row['f1']:>6.4f}  {row['support']:>7d}"
            )
        if self.confusion:
            lines += ["", "confusion (rows = gold, columns = refined):"]
            heads = _short_headings(self.labels)
            cell_w = max(len(x) for x in [*heads, *(str(v) for r in self.confusion for v in r)])
            lines.append("  " + " " * name_w + "".join(f"  {h:>{cell_w}}" for h in heads))
            for lab, row in zip(self.labels, self.confusion, strict=True):
                lines.append(f"  {lab:<{name_w}}" + "".join(f"  {v:>{cell_w}d}" for v in row))
        return "\n".join(lines)


def _short_headings(labels: Sequence[str], width: int = 7) -> list[str]:
    """Column headings cut to `width` characters; numbered when the cut makes them clash."""
    heads = [lab[:width] for lab in labels]
    if len(set(heads)) != len(heads):
        heads = [f"{i}:{lab[: width - len(str(i)) - 1]}" for i, lab in enumerate(labels)]
    return heads


def label_text(value: Any, where: str, name: str) -> str | None:
    """A label field's value as text (None stays None). Anything but a string or an integer is
    refused naming the row and field, not read as a class of its own (``evaluate`` and the
    review page both read labels this way)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: field {name!r}: expected a label (string or int), "
                         f"got {value!r}")
    return str(value)


def _gold_label(value: Any, where: str, name: str) -> str | None:
    """A gold label as text; None when missing or blank (not scored)."""
    text = label_text(value, where, name)
    return text if text and text.strip() else None


def _as_label(value: Any) -> str | None:
    # JSON labels may be numbers; compare everything as strings so 1 and "1" agree.
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def evaluate_records(records: Iterable[dict[str, Any]], **options: Any) -> EvaluationReport:
    """Score refined rows against gold labels (``options``: :func:`evaluate_located`'s); an
    error names a row by its place in ``records``."""
    return evaluate_located(
        ((f"row {row_no}", rec) for row_no, rec in enumerate(records, start=1)), **options)


def evaluate_located(
    located: Iterable[tuple[str, dict[str, Any]]],
    gold_field: str = "gold_label",
    given_field: str = "given_label",
    predicted_field: str = "predicted_label",
    confidence_field: str = "confidence",
    labels: Sequence[str] | None = None,
    n_bins: int = 15,
) -> EvaluationReport:
    """Score refined rows, given as (where, row) pairs as :func:`read_located_records` gives
    them (an error names the file and line), against gold labels.

    Rows whose gold label is missing, None or blank count in n_rows but are not scored. The
    given, predicted and confidence fields must exist in every row; given/predicted may be None
    (wrong). `labels` defaults to the sorted union of gold, given and predicted labels seen.
    """
    n_rows = 0
    gold: list[str] = []
    given: list[str | None] = []
    pred: list[str | None] = []
    conf: list[float] = []
    seen: set[str] = set()
    for where, rec in located:
        n_rows += 1
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a dict, got {type(rec).__name__}")
        for name in (given_field, predicted_field, confidence_field):
            if name not in rec:
                raise ValueError(f"{where}: required field {name!r} is missing "
                                 "(is this refine's output?)")
        g_lab = _gold_label(rec.get(gold_field), where, gold_field)
        giv = _as_label(rec[given_field])
        prd = _as_label(rec[predicted_field])
        seen.update(x for x in (g_lab, giv, prd) if x)
        if not g_lab:
            continue
        c = rec[confidence_field]
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c <= 1.0:
            raise ValueError(
                f"{where}: field {confidence_field!r} must be a number in [0, 1], got {c!r}"
            )
        gold.append(g_lab)
        given.append(giv)
        pred.append(prd)
        conf.append(float(c))
    if not gold:
        raise ValueError(
            f"no row has a gold label in field {gold_field!r} ({n_rows} rows read); "
            "evaluation needs human labels"
        )

    label_list = sorted(seen) if labels is None else list(labels)
    changed = fixed = broken = filled = filled_right = 0
    for g, gv, p in zip(gold, given, pred, strict=True):
        if gv is None:
            filled += p is not None
            filled_right += p == g
            continue
        if gv == p:
            continue
        changed += 1
        if p == g:
            fixed += 1
        elif gv == g:
            broken += 1
    correct = np.array([p == g for p, g in zip(pred, gold, strict=True)], dtype=bool)
    confidence = np.array(conf, dtype=np.float64)
    return EvaluationReport(
        n_rows=n_rows,
        n_scored=len(gold),
        labels=label_list,
        given_accuracy=accuracy(given, gold),
        refined_accuracy=accuracy(pred, gold),
        changed=changed,
        fixed=fixed,
        broken=broken,
        ece=expected_calibration_error(confidence, correct, n_bins),
        filled=filled,
        filled_right=filled_right,
        reliability=reliability_bins(confidence, correct, n_bins),
        per_class=per_class_report(pred, gold, label_list),
        confusion=confusion_matrix(pred, gold, label_list).tolist(),
    )


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the rows of what refine wrote: a JSONL file (blank lines skipped), a Parquet, CSV
    or TSV file (JSONL, CSV and TSV also ``.gz`` or ``.zst``), or a `--engine ray` output
    directory (its part-* shards)."""
    for _, rec in read_located_records(path):
        yield rec


def read_located_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """:func:`read_records` with where each row is, for error messages: ``file:line`` for JSONL,
    ``file: row N`` for Parquet, CSV and TSV."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(path.glob("part-*.jsonl")) + sorted(path.glob("part-*.parquet"))
        if not shards:
            raise ValueError(f"{path}: a directory without part-*.jsonl or part-*.parquet shards")
        for shard in shards:
            yield from read_located_records(shard)
        return
    kind = detect_format(path)
    if kind == "parquet":
        from .formats import read_parquet_rows

        for row_no, rec in enumerate(read_parquet_rows(path), start=1):
            yield f"{path}: row {row_no}", rec
        return
    if kind in ("csv", "tsv"):
        from .formats import read_csv_rows

        rows = read_csv_rows(path, "," if kind == "csv" else "\t")
        for row_no, rec in enumerate(rows, start=1):
            yield f"{path}: row {row_no}", rec
        return
    # Bytes, so that a decoding error names its line; .gz and .zst are decompressed.
    for line_no, raw in enumerate(read_raw_lines(path), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}:{line_no}: not UTF-8 text (is it JSONL?)") from exc
        if line.strip():
            yield f"{path}:{line_no}", _record(path, line_no, line)


def _record(path: Path, line_no: int, line: str) -> dict[str, Any]:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{line_no}: invalid JSON: {exc.msg}") from exc
    if not isinstance(rec, dict):
        raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(rec).__name__}")
    return rec


def write_plots(
    report: EvaluationReport,
    out_dir: str | Path,
    title: str = "",
    extra_accuracies: dict[str, float] | None = None,
) -> list[Path]:
    """Write accuracy.png and reliability.png into out_dir; return their paths."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RuntimeError(
            "write_plots needs matplotlib; install it with: pip install 'sidyp-prod[plot]'"
        ) from exc

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = f"{title}: " if title else ""

    # Figure + Agg canvas, not pyplot: leaves the caller's global backend and figures alone.
    names = ["given", "refined", *(extra_accuracies or {})]
    values = [report.given_accuracy, report.refined_accuracy, *(extra_accuracies or {}).values()]
    fig = Figure(figsize=(max(4.0, 1.2 * len(names) + 1.5), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = ["tab:gray", "tab:blue"] + ["tab:orange"] * (len(names) - 2)
    bars = ax.bar(names, values, color=colors)
    for bar, v in zip(bars, values, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center", va="bottom")
    ax.set_ylim(0.0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{prefix}accuracy vs gold (n={report.n_scored})")
    fig.tight_layout()
    acc_path = out / "accuracy.png"
    fig.savefig(acc_path, dpi=120)

    fig = Figure(figsize=(5.0, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    filled = [b for b in report.reliability if b["count"]]
    ax.bar(
        [b["lo"] for b in filled],
        [b["accuracy"] for b in filled],
        width=[b["hi"] - b["lo"] for b in filled],
        align="edge",
        edgecolor="black",
        color="tab:blue",
        alpha=0.8,
        label="accuracy",
    )
    for b in filled:
        ax.text(
            (b["lo"] + b["hi"]) / 2,
            b["accuracy"] + 0.01,
            str(b["count"]),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.08)
    ax.set_xlabel("confidence of refined label")
    ax.set_ylabel("accuracy (bar labels: rows per bin)")
    ax.set_title(f"{prefix}reliability (ECE = {report.ece:.4f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    rel_path = out / "reliability.png"
    fig.savefig(rel_path, dpi=120)
    return [acc_path, rel_path]
