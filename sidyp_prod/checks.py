"""Checks that turn silent successes and late failures into clear messages.

Three kinds: paths checked before any work (an existing bundle, a directory given as a corpus),
a tally of what the corpus's rows looked like (which fields they have, how many lack the label
field, why rows were rejected), and the rules under which a refinement that finished is still a
failure (most rows rejected, or no label of the corpus in the bundle's label set). The tally
observes parsed rows, so it does not depend on how a file was read.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .corpus import STDIO, Reject, Row

DEFAULT_MAX_REJECT_FRACTION = 0.5
# "Nearly all": the label field is missing from at least this fraction of the rows read.
LABEL_FIELD_ABSENT_FRACTION = 0.9
REASONS_SHOWN = 3


class MissingExtraError(RuntimeError):
    """A feature needs an optional install that is not there."""


# What each part beyond refinement needs: the distributions that pip installs with the extra.
TRAIN_EXTRA = ("torch", "transformers")


def require_train_extra(what: str) -> None:
    """Refuse ``what`` (training, ONNX export, the PyTorch back end) clearly when the training
    extra is missing: the plain install refines, serves and reports without torch."""
    import importlib.util

    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):  # an import hook refused it
            return True

    missing = [name for name in TRAIN_EXTRA if absent(name)]
    if missing:
        raise MissingExtraError(
            f"{what} needs {' and '.join(missing)}: pip install 'sidyp-prod[train]' "
            "(refine with a trained bundle, export --no-onnx, serve, evaluate and report "
            "do not)"
        )


def check_corpus_path(path: str | Path, input_format: str | None = None) -> None:
    """A corpus given on the command line must be a file (or '-'), or a ``datasets``
    save_to_disk directory; say so before any work."""
    if str(path) == STDIO:
        return
    path = Path(path)
    is_dataset = (path / "state.json").is_file() or (path / "dataset_info.json").is_file()
    if path.is_dir() and (is_dataset or input_format == "datasets"):
        return
    if path.is_dir():
        raise ValueError(
            f"{path}: is a directory, and not a datasets save_to_disk directory (no state.json); "
            "give one corpus file (`refine --engine ray` reads a directory's corpus files)"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")


def check_bundle_target(out: str | Path, overwrite: bool) -> None:
    """Where train will write its bundle, checked before training (which takes minutes)."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir():
        if not overwrite:
            raise ValueError(f"{out}: already exists; pass --overwrite to replace it")
        if not (out / "manifest.json").is_file() and any(out.iterdir()):
            raise ValueError(
                f"{out}: exists, is not empty and is not a bundle; refusing to replace it"
            )


def check_parent(path: str | Path | None, option: str) -> None:
    """An output file's directory must exist, and the path must not be a directory."""
    if path is None or str(path) == STDIO:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a directory; give a file name")
    parent = path.absolute().parent
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: the directory {parent} does not exist")


def check_distinct(paths: Mapping[str, str | Path | None]) -> None:
    """The corpus and each output must be different files (compared resolved): an output
    written over the corpus, or the rejects over the output, would destroy it."""
    seen: dict[Path, str] = {}
    for name, path in paths.items():
        if path is None or str(path) == STDIO:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ValueError(f"{name} {path} is the same file as {seen[resolved]}: "
                             "give each its own path")
        seen[resolved] = f"{name} {path}"


def reject_reason(reject: dict[str, Any]) -> str:
    """One line of a rejects file as the summary shows it: where the row is (JSONL's line; the
    other formats' row, with the line a CSV record starts on) and why."""
    if "row" in reject:
        where = f"row {reject['row']}"
        if "line" in reject:
            where += f" (line {reject['line']})"
    else:
        where = f"line {reject.get('line')}"
    return f"{where}: {reject.get('reason')}"


def first_reject_reasons(path: str | Path | None, limit: int = REASONS_SHOWN) -> list[str]:
    """The first ``limit`` reasons of a rejects file (empty if there is none)."""
    if path is None or not Path(path).is_file():
        return []
    reasons = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if len(reasons) >= limit:
                break
            reasons.append(reject_reason(json.loads(line)))
    return reasons


@dataclass
class CorpusTally:
    """What the rows of a corpus looked like, for messages about them."""

    label_field: str
    rows: int = 0
    rejected: int = 0
    labelled: int = 0
    label_absent: int = 0  # usable rows without the label field at all
    label_null: int = 0  # usable rows whose label is null
    label_outside: int = 0  # rows rejected for a label outside the label set
    fields: Counter = field(default_factory=Counter)
    reasons: list[str] = field(default_factory=list)

    def observe(self, item: Row | Reject) -> None:
        if isinstance(item, Reject):
            self.rejected += 1
            if len(self.reasons) < REASONS_SHOWN:
                self.reasons.append(reject_reason(item.to_json()))
            if item.field == self.label_field and "not in the label set" in item.reason:
                self.label_outside += 1
            return
        self.rows += 1
        self.fields.update(item.record.keys())
        if self.label_field not in item.record:
            self.label_absent += 1
        elif item.label is None:
            self.label_null += 1
        else:
            self.labelled += 1

    @property
    def read(self) -> int:
        return self.rows + self.rejected

    def fields_text(self) -> str:
        return ", ".join(f'"{name}" ({count})' for name, count in self.fields.most_common(12))

    def label_field_warning(self) -> str | None:
        """When the label field is missing from (nearly) every row: probably the wrong name."""
        if not self.rows or self.label_absent < LABEL_FIELD_ABSENT_FRACTION * self.rows:
            return None
        return (
            f'field "{self.label_field}" is missing from {self.label_absent} of {self.rows} '
            f"rows, which count as refused by the LLM; the rows have the fields "
            f"{self.fields_text()}: pass --label-field NAME if the label is in another"
        )

    def no_labels_message(self, path: str | Path, rejects: str | Path | None) -> str:
        """Why a corpus gave no labelled row to train on, case by case."""
        if self.read == 0:
            return f"{path}: the file is empty"
        if self.rows == 0:
            return (f"{path}: all {self.rejected} lines were rejected (reasons in {rejects}; "
                    f"first: {'; '.join(self.reasons)})")
        warning = self.label_field_warning()
        if warning:
            return f"{path}: {warning}"
        if self.labelled == 0:
            return (f'{path}: the label field "{self.label_field}" is null in all {self.rows} '
                    "usable rows: there is no LLM label to learn from")
        return ""


def reject_fraction_problems(read: int, rejected: int, max_reject_fraction: float) -> list[str]:
    """The rule any refinement (local or Ray) fails by when most of its rows were rejected."""
    if read and rejected > max_reject_fraction * read:
        return [f"{rejected} of {read} rows rejected ({rejected / read:.0%}), more than "
                f"--max-reject-fraction {max_reject_fraction:g}"]
    return []


def refine_problems(
    read: int,
    rejected: int,
    tally: CorpusTally,
    labels: list[Any],
    max_reject_fraction: float,
) -> list[str]:
    """Why a finished refinement still failed (exit code 3): most rows rejected, or none of
    the corpus's labels in the bundle's label set."""
    problems = reject_fraction_problems(read, rejected, max_reject_fraction)
    if tally.label_outside and not tally.labelled:
        shown = ", ".join(json.dumps(label, ensure_ascii=False) for label in labels[:10])
        problems.append(
            f"no label of the corpus is in the bundle's label set ({shown}"
            f"{', ...' if len(labels) > 10 else ''}): a bundle trained for another task, or "
            "--label-field names another field"
        )
    return problems


def small_classes_text(small: list[int], given: Any, labels: list[Any], min_rows: int) -> str:
    """The warning for classes too small to train on (decision.small_classes)."""
    if not small:
        return ""
    counts = [int((given == c).sum()) for c in small]
    names = ", ".join(f"{json.dumps(labels[c], ensure_ascii=False)} ({n} rows)"
                      for c, n in zip(small, counts, strict=True))
    return (f"classes with fewer than {min_rows} LLM labels are kept as labels but never a "
            f"change target: {names} (--min-class-rows sets the minimum, 0 allows them)")
