"""In-memory inputs and outputs of the notebook API (``api.refine_frame``, ``api.apply_frame``).

Texts and LLM labels come from lists (or any sequence, a pandas Series, a numpy array), a
pandas DataFrame or a ``datasets.Dataset`` (its ClassLabel indices become their names); the
refined columns go back as a pandas DataFrame with one row per input row, in input order and
with the input's index, so ``df.join(result)`` lines them up.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .corpus import FieldNames, Reject, Row, json_line, parse_record
from .readers import normalize_record

__all__ = ["OUTPUT_COLUMNS", "REJECT_COLUMN", "FrameInput", "frame_input", "result_frame"]

OUTPUT_COLUMNS = (
    "given_label", "predicted_label", "label_score", "is_label_issue", "confidence", "candidates",
)
REJECT_COLUMN = "reject_reason"  # why a row could not be refined (None: it was)
TEXT, LABEL, POSITION = "text", "label", "id"
FIELDS = FieldNames(TEXT, LABEL, POSITION)


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as exc:
        raise RuntimeError("the DataFrame API needs pandas: pip install 'sidyp-prod[pandas]'") \
            from exc
    return pd


@dataclass
class FrameInput:
    """The rows to refine as records ``{"text", "label", "id": position}`` and the index the
    result gets (None: 0..n-1)."""

    records: list[dict[str, Any]]
    index: Any = None

    def jsonl(self) -> Iterable[str]:
        """The records as JSON lines: a corpus file for ``api.train``."""
        return (json_line(record) for record in self.records)

    def parse(self, labels: Sequence[str] | None, max_chars: int = 100_000) -> list[Row | Reject]:
        """Each record as a Row or Reject, checked as a corpus row is (position + 1 its row)."""
        allowed = frozenset(labels) if labels is not None else None
        return [parse_record(i + 1, record, FIELDS, allowed, max_chars, json_line(record)[:-1],
                             "row") for i, record in enumerate(self.records)]


def _is_dataframe(data: Any) -> bool:
    return hasattr(data, "columns") and hasattr(data, "iloc")


def _is_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("datasets") and hasattr(data, "column_names")


def _columns(data: Any, text_column: str, label_column: str
             ) -> tuple[list[Any], list[Any] | None, Any, list[str] | None]:
    """Texts, labels (None: no label column), index and ClassLabel names of a table."""
    if _is_dataframe(data):
        names, index = list(data.columns), data.index
    else:
        names, index = list(data.column_names), None
    if text_column not in names:
        raise ValueError(f'no column "{text_column}" (columns: {", ".join(map(str, names))}); '
                         "name the text column with text_column=")
    texts = list(data[text_column])
    labels = list(data[label_column]) if label_column in names else None
    class_names = None
    if not _is_dataframe(data):
        feature = data.features.get(label_column)
        if hasattr(feature, "names") and hasattr(feature, "int2str"):
            class_names = [str(n) for n in feature.names]
    return texts, labels, index, class_names


def frame_input(
    data: Any,
    labels: Sequence[Any] | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
) -> FrameInput:
    """Normalise the notebook API's input.

    ``data`` is a DataFrame or ``datasets.Dataset`` (texts in ``text_column``, the LLM's labels
    in ``label_column`` unless ``labels`` is given; a missing label column means no labels), or
    a sequence of texts with ``labels`` beside it (None: no labels). A missing label (None,
    NaN, pandas NA, a ClassLabel's -1) is the LLM's refusal; whole-number float labels are ints.
    """
    class_names = None
    if _is_dataframe(data) or _is_dataset(data):
        texts, given, index, class_names = _columns(data, text_column, label_column)
    elif isinstance(data, str | bytes):
        raise TypeError("data: give a sequence of texts, a DataFrame or a datasets.Dataset, "
                        "not one string")
    else:
        # A pandas Series keeps its index; other sequences get positions.
        texts, given, index = list(data), None, data.index if hasattr(data, "iloc") else None
    if labels is not None:
        given = list(labels)
    if given is None:
        given = [None] * len(texts)
    if len(given) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(given)} labels")
    records = [
        {TEXT: record[TEXT], LABEL: record[LABEL], POSITION: i}
        for i, (text, label) in enumerate(zip(texts, given, strict=True))
        for record in [normalize_record({TEXT: text, LABEL: label}, FIELDS, class_names)]
    ]
    return FrameInput(records, index)


def result_frame(
    source: FrameInput, refined: Iterable[dict[str, Any]], rejects: Iterable[Reject]
) -> Any:  # -> pandas.DataFrame
    """The refined columns, one row per input row in input order: the output fields of each
    refined record (its ``id`` is its position) and, for a rejected row, nulls there and the
    reason in ``reject_reason``."""
    pd = _pandas()
    n = len(source.records)
    columns: dict[str, list[Any]] = {name: [None] * n for name in (*OUTPUT_COLUMNS, REJECT_COLUMN)}
    for record in refined:
        for name in OUTPUT_COLUMNS:
            columns[name][record[POSITION]] = record[name]
    for reject in rejects:
        columns[REJECT_COLUMN][reject.line_no - 1] = reject.reason
    frame = pd.DataFrame(columns, index=source.index)
    frame["is_label_issue"] = frame["is_label_issue"].astype("boolean")
    return frame
