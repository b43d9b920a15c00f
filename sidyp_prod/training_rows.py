"""A corpus's training rows (a sample drawn per LLM label past ``max_train_rows``), and what
``train`` writes beside the bundle: the rejected rows and the corpus's own refined records."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .checks import CorpusTally
from .corpus import (
    AtomicWriter,
    FieldNames,
    Reject,
    Row,
    iter_corpus,
    label_set_from_labels,
    label_set_from_rows,
)
from .formats import converter
from .sampling import stratified_sample


class TrainingRows(NamedTuple):
    rows: list[Row]  # what training sees
    rejected: list[Reject]
    label_set: list[Any]
    usable: int  # rows of the corpus that could be trained on (more than ``rows`` past the cap)
    # Each row's place among those usable rows (0-based): the row of the refined file of the
    # whole corpus, and where the review page finds a neighbour's text past a sample.
    positions: np.ndarray


def split_rows(items: Iterable[Row | Reject]) -> tuple[list[Row], list[Reject]]:
    rows: list[Row] = []
    rejects: list[Reject] = []
    for item in items:
        (rows if isinstance(item, Row) else rejects).append(item)  # type: ignore[arg-type]
    return rows, rejects


def _tallied(items: Iterable[Row | Reject], tally: CorpusTally) -> Iterator[Row | Reject]:
    for item in items:
        tally.observe(item)
        yield item


def read_training_rows(
    corpus: str | Path,
    fields: FieldNames,
    labels: Sequence[str] | None,
    strict: bool,
    max_rows: int | None,
    seed: int,
    tally: CorpusTally,
    input_format: str | None = None,
    trusted_field: str | None = None,
) -> TrainingRows:
    """The training rows of ``corpus``. Past ``max_rows`` (0 or None: no limit) they are a sample
    drawn per LLM label (``sampling.stratified_sample``): a first pass keeps only each row's
    label code, a second reads the chosen rows. Rows with a value in ``trusted_field`` always
    join the sample (the trusted check counts only trained rows, and a sample would drop most of
    them). ``tally`` observes every row read."""
    if not max_rows or str(corpus) == "-":  # stdin cannot be read twice: sample in memory
        rows, rejected = split_rows(
            _tallied(iter_corpus(corpus, fields, labels, strict=strict,
                                 input_format=input_format), tally)
        )
        label_set = list(labels) if labels else label_set_from_rows(rows)
        usable = len(rows)
        positions = np.arange(usable, dtype=np.int64)
        if max_rows and usable > max_rows:
            index = {label: i for i, label in enumerate(label_set)}
            codes = np.array([index.get(r.label, -1) if r.label is not None else -1
                              for r in rows], dtype=np.int64)
            chosen = set(stratified_sample(codes, max_rows, seed).tolist())
            positions = np.array([i for i, r in enumerate(rows)
                                  if i in chosen or _trusted(r, trusted_field)], dtype=np.int64)
            rows = [rows[i] for i in positions]
        return TrainingRows(rows, rejected, label_set, usable, positions)
    seen: dict[str, int] = {}
    label_codes: list[int] = []
    lines: list[int] = []
    trusted_lines: set[int] = set()
    rejected = []
    for item in _tallied(iter_corpus(corpus, fields, labels, strict=strict,
                                     input_format=input_format), tally):
        if isinstance(item, Reject):
            rejected.append(item)
            continue
        label_codes.append(-1 if item.label is None else seen.setdefault(item.label, len(seen)))
        lines.append(item.line_no)
        if _trusted(item, trusted_field):
            trusted_lines.add(item.line_no)
    chosen = stratified_sample(np.asarray(label_codes, dtype=np.int64), max_rows, seed)
    wanted = set(np.asarray(lines, dtype=np.int64)[chosen].tolist()) | trusted_lines
    rows = [
        item for item in iter_corpus(corpus, fields, labels, input_format=input_format)
        if isinstance(item, Row) and item.line_no in wanted
    ]
    place = {line: i for i, line in enumerate(lines)}
    positions = np.array([place[row.line_no] for row in rows], dtype=np.int64)
    if labels:
        return TrainingRows(rows, rejected, list(labels), len(label_codes), positions)
    label_set = label_set_from_labels(list(seen))
    if label_set and isinstance(label_set[0], str):
        for row in rows:  # as label_set_from_rows does: one type for the set and the rows
            row.label = None if row.label is None else str(row.label)
    return TrainingRows(rows, rejected, label_set, len(label_codes), positions)


def _trusted(row: Row, field: str | None) -> bool:
    return field is not None and row.record.get(field) not in (None, "")


def trusted_codes(
    rows: Sequence[Row], field: str, label_set: Sequence[Any], corpus: str | Path
) -> np.ndarray:
    """Each row's label from a person in ``field`` as a class index (-1: none given).

    A value outside the label set is an error naming the line, as is a field no row has (a
    misspelt name would otherwise silently disable the check it asks for)."""
    index = {label: i for i, label in enumerate(label_set)}
    as_str = bool(label_set) and isinstance(label_set[0], str)
    codes = np.full(len(rows), -1, dtype=np.int64)
    for i, row in enumerate(rows):
        if not _trusted(row, field):
            continue
        value = row.record[field]
        key = str(value) if as_str else value
        if key not in index:
            raise ValueError(f"{corpus}, line {row.line_no}: field {field!r} is {value!r}, "
                             f"not one of the labels {list(label_set)}")
        codes[i] = index[key]
    if not (codes >= 0).any():
        raise ValueError(f"{corpus}: no training row has a value in field {field!r} "
                         "(--trusted-field)")
    return codes


def write_rejects(path: Path, rejects: Sequence[Reject]) -> None:
    """The rejects file; with no rejects, none (an earlier run's would count rows twice)."""
    if not rejects:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)  # the bundle's parent, made as save_bundle does
    with AtomicWriter(path) as writer:
        for reject in rejects:
            writer.write_json(reject.to_json())


def write_records(path: Path, records: Iterable[dict]) -> None:
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
