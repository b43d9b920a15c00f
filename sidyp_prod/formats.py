"""Output formats other than JSONL."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from .corpus import open_binary

BATCH_ROWS = 8192
LABEL_FIELDS = ("given_label", "predicted_label")


def _batches(source: Path, size: int) -> Iterator[list[dict]]:
    batch: list[dict] = []
    with source.open(encoding="utf-8") as f:
        for line in f:
            batch.append(json.loads(line))
            if len(batch) == size:
                yield batch
                batch = []
    if batch:
        yield batch


def _output_fields() -> dict:  # name -> pyarrow.Field
    """The fields refine adds, typed up front: the same in every file and shard, even where a
    batch has only nulls there (every row refused by the LLM)."""
    import pyarrow as pa

    # given_label and predicted_label take the labels' type (integers stay integers): from the
    # rows, string where every row's is null (LABEL_FIELDS).
    types = {
        "label_score": pa.float64(),
        "is_label_issue": pa.bool_(), "confidence": pa.float64(),
        # a map from label to weight, not a struct of every label seen
        "candidates": pa.map_(pa.string(), pa.float64()),
    }
    return {name: pa.field(name, kind) for name, kind in types.items()}


def _array(name: str, values: list, kind=None):  # -> pyarrow.Array
    """One column; values that do not fit one type raise ValueError naming the field."""
    import pyarrow as pa

    try:
        return pa.array(values, type=kind)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ValueError(f"field {name!r} has values of more than one type: {exc}") from exc


def _table(batch: list[dict], schema):  # -> pyarrow.Table
    """A batch as a table of ``schema``, null where a row lacks a field (pyarrow's from_pylist
    would take the fields of the first row only)."""
    import pyarrow as pa

    columns = [_array(f.name, [row.get(f.name) for row in batch], f.type) for f in schema]
    return pa.table(columns, schema=schema)


def _schema(source: Path, batch_rows: int):  # -> pyarrow.Schema
    """One schema for every row: the union of the fields of all batches, a field null in one
    batch taking its type from another (a first pass; memory bounded by the batch)."""
    import pyarrow as pa

    typed, schema = _output_fields(), None
    for batch in _batches(source, batch_rows):
        names = dict.fromkeys(key for row in batch for key in row)  # every row's, in order
        part = pa.schema([
            typed.get(name) or pa.field(name, _array(name, [row.get(name) for row in batch]).type)
            for name in names
        ])
        try:
            schema = part if schema is None else pa.unify_schemas(
                [schema, part], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ValueError(f"a field has two types: {exc}") from exc
    if schema is None:
        return pa.schema([])
    for name in LABEL_FIELDS:
        index = schema.get_field_index(name)
        if index >= 0 and pa.types.is_null(schema.field(index).type):
            schema = schema.set(index, pa.field(name, pa.string()))
    return schema


def jsonl_to_parquet(source: Path, target: Path, batch_rows: int = BATCH_ROWS) -> None:
    """Convert refined JSONL to Parquet batch by batch (memory bounded by the batch).

    Two passes: the first finds one schema for all rows (every field of every row, so nothing
    is dropped; a field missing from a row is null there); the second writes. A field with two
    incompatible types (a number in one row, text in another) is an error naming it, and no
    Parquet file is left behind.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        message = "Parquet output needs pyarrow: pip install 'sidyp-prod[parquet]'"
        raise RuntimeError(message) from exc
    tmp = target.with_name(target.name + ".tmp")
    try:
        schema = _schema(source, batch_rows)
        with pq.ParquetWriter(tmp, schema) as writer:
            for batch in _batches(source, batch_rows):
                writer.write_table(_table(batch, schema))
    except ValueError as exc:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{target}: {exc}") from exc
    os.replace(tmp, target)


def read_parquet_rows(path: Path, batch_rows: int = BATCH_ROWS) -> Iterator[dict]:
    """The rows of a Parquet file written by refine, as the JSONL rows were (candidates back to a
    label -> weight object); memory bounded by the batch."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise RuntimeError(f"{path}: reading Parquet needs pyarrow: "
                           "pip install 'sidyp-prod[parquet]'") from exc
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
        for batch in batches:
            for row in batch.to_pylist():
                if isinstance(row.get("candidates"), list):
                    row["candidates"] = dict(row["candidates"])
                yield row
    except pa.ArrowException as exc:
        raise ValueError(f"{path}: not a readable Parquet file: {exc}") from exc


def _csv_cell(value: object) -> str:
    """One cell: text as it is, null empty, numbers and booleans as JSON writes them, objects
    and lists (``candidates``) as JSON text."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def jsonl_to_csv(source: Path, target: Path, delimiter: str = ",") -> None:
    """Convert refined JSONL to CSV (or TSV) with a header row, row by row.

    Two passes: the first collects every field of every row (in the order they first appear),
    the second writes; a field a row lacks is an empty cell. Fields with line breaks are quoted,
    so a row may span lines (every CSV reader handles that). Lines end in ``\\n``.
    """
    columns: dict[str, None] = {}
    with source.open(encoding="utf-8") as f:
        for line in f:
            columns.update(dict.fromkeys(json.loads(line)))
    tmp = target.with_name(target.name + ".tmp")
    try:
        with source.open(encoding="utf-8") as f, tmp.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
            writer.writerow(columns)
            for line in f:
                row = json.loads(line)
                writer.writerow([_csv_cell(row.get(name)) for name in columns])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def output_format(path: str | Path) -> str:
    """What an output path's extension asks for: ``parquet``, ``csv``, ``tsv`` or ``jsonl``
    (anything else, and ``-``)."""
    suffix = Path(str(path)).suffix.lower()
    return {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv"}.get(suffix, "jsonl")


def converter(path: str | Path) -> Callable[[Path, Path], None] | None:
    """How to turn the JSONL that refine writes into the format of ``path`` (None: JSONL)."""
    kind = output_format(path)
    if kind == "parquet":
        return jsonl_to_parquet
    if kind in ("csv", "tsv"):
        return partial(jsonl_to_csv, delimiter="," if kind == "csv" else "\t")
    return None


_CSV_TYPES = {"label_score": float, "confidence": float}


def _output_cell(name: str, cell: str) -> object:
    """A refine output column read back from CSV as JSONL had it (an empty cell is null: CSV
    cannot tell them apart)."""
    if cell == "":
        return None
    if name in _CSV_TYPES:
        return _CSV_TYPES[name](cell)
    if name == "is_label_issue":
        return cell == "true"
    if name == "candidates":
        return json.loads(cell)
    return cell


def read_csv_rows(path: Path, delimiter: str = ",") -> Iterator[dict]:
    """The rows of a CSV or TSV file written by refine, with its columns typed back (scores as
    numbers, ``is_label_issue`` as a boolean, ``candidates`` as an object, empty cells as
    null); others stay text."""
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    stream, _ = open_binary(path)  # .gz and .zst are decompressed
    with io.TextIOWrapper(stream, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for row_no, row in enumerate(reader, start=1):
            try:
                yield {name: _output_cell(name, cell or "") for name, cell in row.items()}
            except ValueError as exc:
                raise ValueError(f"{path}: row {row_no}: {exc}") from exc
