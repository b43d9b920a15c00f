"""The flagged rows in formats that reviewers' tools import, written as a stream.

- Label Studio: a JSON array of tasks in Label Studio's basic JSON format, each with ``data``
  (the text and the row's other fields) and one entry in ``predictions`` (a ``choices`` result
  for the control ``label`` on the object ``text``, its ``score`` the confidence);
  :func:`label_studio_config` is the labeling configuration that matches it.
- Argilla: JSON Lines of flat records, one a row, for ``dataset.records.log(records, mapping=...)``
  of the Argilla 2 SDK (docs/report.md has the settings and the mapping).

Both are written to a temporary name and renamed when complete (:class:`AtomicWriter`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from .corpus import AtomicWriter

__all__ = ["ArgillaWriter", "LabelStudioWriter", "label_studio_config"]

# The names the two formats use for the text and the label question.
TEXT_NAME = "text"
LABEL_NAME = "label"


def label_studio_config(labels: Sequence[str]) -> str:
    """The Label Studio labeling configuration the exported tasks' predictions refer to."""
    choices = "".join(f'    <Choice value={quoteattr(str(lab))}/>\n' for lab in labels)
    return (
        "<View>\n"
        f'  <Text name="{TEXT_NAME}" value="$text"/>\n'
        f'  <Choices name="{LABEL_NAME}" toName="{TEXT_NAME}" choice="single" showInline="true">\n'
        f"{choices}"
        "  </Choices>\n"
        "</View>\n"
    )


def _reason(row: dict[str, Any]) -> str:
    return (
        f"SiDyP: LLM label {row['given_label']!r} has label_score {row['label_score']:.3f}; "
        f"suggested {row['predicted_label']!r} with confidence {row['confidence']:.3f}"
    )


class LabelStudioWriter(AtomicWriter):
    """Label Studio tasks with predictions, one JSON array streamed element by element."""

    def __init__(self, path: str | Path, model_version: str) -> None:
        super().__init__(path)
        self.rows = 0
        self.model_version = model_version
        self.write("[\n")

    def add(self, row: dict[str, Any], text: str, row_id: Any) -> None:
        """One flagged row: ``row`` is the refined record (its refined fields are read)."""
        data = {k: v for k, v in row.items() if k != "candidates"}
        data[TEXT_NAME] = text
        data["id"] = row_id
        task = {
            "data": data,
            "predictions": [
                {
                    "model_version": self.model_version,
                    "score": row["confidence"],
                    "result": [
                        {
                            "from_name": LABEL_NAME,
                            "to_name": TEXT_NAME,
                            "type": "choices",
                            "value": {"choices": [row["predicted_label"]]},
                        }
                    ],
                }
            ],
        }
        prefix = ",\n" if self.rows else ""
        self.write(prefix + json.dumps(task, ensure_ascii=False, sort_keys=True))
        self.rows += 1

    def commit(self) -> None:
        """Close the array, then complete the file."""
        if not self._done:
            self.write("\n]\n")
        super().commit()


class ArgillaWriter(AtomicWriter):
    """Flat Argilla records: the text field, the suggestion and its score, and metadata."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.rows = 0

    def add(self, row: dict[str, Any], text: str, row_id: Any) -> None:
        record = {
            "id": str(row_id),
            TEXT_NAME: text,
            "suggested_label": row["predicted_label"],
            "suggestion_score": row["confidence"],
            "given_label": row["given_label"],
            "label_score": row["label_score"],
            "candidates": json.dumps(row.get("candidates") or {}, ensure_ascii=False),
            "reason": _reason(row),
        }
        self.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        self.rows += 1
