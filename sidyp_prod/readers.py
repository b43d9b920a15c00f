"""Corpus readers for the files people have: CSV and TSV, Parquet, a Hugging Face ``datasets``
directory (``save_to_disk``). JSONL stays in :mod:`sidyp_prod.corpus`.

Every reader yields one ``Row`` or ``Reject`` per input row, numbered from 1 in file order (the
CSV header is not a row; a CSV record is one row however many lines its quoted fields span), so
``input rows == rows + rejects`` holds for every format and ``--resume`` skips by row position.
Rejects say ``row`` (and, for CSV, the ``line`` the record starts on) where JSONL's say ``line``.
All readers stream: CSV record by record, Parquet in batches of rows read through a buffer
(row group by row group, and within a row group, so memory is bounded by the batch), the
``datasets`` Arrow files batch by batch from a memory map; nothing is read whole into memory.
The field checks are :func:`sidyp_prod.corpus.parse_record`, the same as JSONL's.
"""

from __future__ import annotations

import base64
import csv
import datetime
import json
import math
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from .corpus import (
    BLANK_LINE,
    STDIO,
    FieldNames,
    InputError,
    Reject,
    Row,
    count_lines,
    parse_record,
    read_raw_lines,
)

__all__ = [
    "FORMATS",
    "count_rows",
    "detect_format",
    "iter_rows",
    "normalize_record",
    "plain_value",
]

FORMATS = ("jsonl", "csv", "tsv", "parquet", "datasets")
BATCH_ROWS = 1024
_READ_BUFFER = 1 << 20  # Parquet column chunks are read through a buffer of this size
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet",
               ".pq": "parquet"}
_COMPRESSED = (".gz", ".zst")
_BOM = "\ufeff"
_FIELD_LIMIT = 1 << 30  # csv's default (128 KiB) would reject long texts instead of truncating


def detect_format(path: str | Path, input_format: str | None = None) -> str:
    """The input format: ``input_format`` if given, else from the name. A directory is a
    ``datasets`` directory; ``.csv``, ``.tsv``/``.tab``, ``.parquet``/``.pq`` (CSV and TSV
    also compressed, ``.csv.gz``); anything else, stdin included, is JSONL."""
    if input_format is not None:
        kind = input_format.lower()
        if kind not in FORMATS:
            raise ValueError(f"unknown input format {input_format!r}; choose one of "
                             + ", ".join(FORMATS))
        return kind
    if str(path) == STDIO:
        return "jsonl"
    path = Path(path)
    if path.is_dir():
        return "datasets"
    name = path.name.lower()
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    return _EXTENSIONS.get(Path(name).suffix, "jsonl")


def file_identity(path: str | Path) -> dict[str, Any]:
    """What must not change between a run and its resumption (the path resolved, so that
    ``a/../b`` and ``b`` are one file)."""
    if str(path) == "-":
        return {"path": "-"}
    path = Path(path).resolve()
    if path.is_dir():  # a datasets directory: its files
        return {"path": str(path), "files": [
            [str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
            for f in sorted(path.rglob("*")) if f.is_file()]}
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def same_path(identity: dict[str, Any] | None, path: str | Path) -> bool:
    """Whether ``file_identity`` described the file at ``path``, whatever it holds now (paths
    compared resolved, so ``a/../b`` and ``b`` are one file; stdin is never the same)."""
    if not identity or str(path) == "-" or identity.get("path") in (None, "-"):
        return False
    return Path(identity["path"]).resolve() == Path(path).resolve()


def same_file(identity: dict[str, Any] | None, path: str | Path) -> bool:
    """Whether ``path`` is, unchanged, the file ``file_identity`` described (:func:`same_path`,
    and its size and modification time, or a directory's files, as they were)."""
    if not same_path(identity, path):
        return False
    assert identity is not None
    current = file_identity(path)
    return ({k: v for k, v in identity.items() if k != "path"}
            == {k: v for k, v in current.items() if k != "path"})


def iter_rows(
    path: str | Path,
    kind: str,
    fields: FieldNames,
    allowed: frozenset[str] | None,
    max_chars: int,
) -> Iterator[Row | Reject]:
    """One Row or Reject per row of a CSV, TSV, Parquet or ``datasets`` input."""
    if kind in ("csv", "tsv"):
        return _csv_rows(path, "," if kind == "csv" else "\t", fields, allowed, max_chars)
    if kind == "parquet":
        names, batches, labels = _parquet_batches(Path(path))
    elif kind == "datasets":
        names, batches, labels = _datasets_batches(Path(path), fields.label)
    else:
        raise ValueError(f"{path}: iter_rows reads csv, tsv, parquet or datasets, not {kind!r}")
    _require_text_column(path, names, fields)
    return _table_rows(batches, fields, allowed, max_chars, labels)


def count_rows(path: str | Path, input_format: str | None = None) -> int | None:
    """The number of input rows when it is known cheaply: a JSONL file's lines, a Parquet
    file's metadata, a ``datasets`` directory's batches; None for CSV and streams."""
    kind = detect_format(path, input_format)
    if kind == "jsonl":
        return count_lines(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if kind == "datasets":
        import pyarrow as pa

        total = 0
        for file in _datasets_files(Path(path)):
            with pa.memory_map(str(file)) as source:
                total += sum(batch.num_rows for batch in pa.ipc.open_stream(source))
        return total
    return None


# --- values ---------------------------------------------------------------------------------


def plain_value(value: Any) -> Any:
    """A JSON-ready copy of one value from Arrow, pandas or numpy: NaN, +-Infinity (not
    JSON) and missing values become None, dates and times ISO 8601 text, decimals text, bytes
    base64 text, numpy scalars and arrays Python numbers and lists."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_value(v) for v in value]
    kind = type(value).__name__
    if kind in ("NAType", "NaTType"):  # pandas' missing values
        return None
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return plain_value(value.tolist())
    return str(value)


def _whole(value: Any) -> Any:
    """A float that is a whole number as an int (pandas stores an int column with gaps as
    float): label 3.0 is label 3."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def normalize_record(
    values: dict[str, Any], fields: FieldNames, class_names: list[str] | None = None
) -> dict[str, Any]:
    """A tabular row as a record: plain values, a whole-number label or id as an int, a
    ``datasets`` ClassLabel index as its name (-1, its "no label", as None)."""
    record = {str(k): plain_value(v) for k, v in values.items()}
    for name in (fields.label, fields.id):
        if name in record:
            record[name] = _whole(record[name])
    label = record.get(fields.label)
    if class_names is not None and isinstance(label, int) and not isinstance(label, bool):
        if label == -1:
            record[fields.label] = None
        elif 0 <= label < len(class_names):
            record[fields.label] = class_names[label]
    return record


def _raw(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, default=str)


def _require_text_column(path: str | Path, names: Iterable[str], fields: FieldNames) -> None:
    names = list(names)
    if fields.text not in names:
        raise ValueError(f'{path}: no column "{fields.text}" (columns: {", ".join(names)}); '
                         "name the text column with --text-field")


def _table_rows(
    batches: Iterator[list[dict[str, Any]]],
    fields: FieldNames,
    allowed: frozenset[str] | None,
    max_chars: int,
    class_names: list[str] | None,
) -> Iterator[Row | Reject]:
    row_no = 0
    for batch in batches:
        for values in batch:
            row_no += 1
            record = normalize_record(values, fields, class_names)
            item = parse_record(row_no, record, fields, allowed, max_chars, "", "row")
            if isinstance(item, Reject):
                item.raw = _raw(record)  # only a reject shows it
            yield item


# --- CSV and TSV ----------------------------------------------------------------------------


class _RecordLines:
    """The file's lines as text for ``csv.reader``, keeping what the current record spans.

    Bytes that are not UTF-8 are kept as surrogates (``surrogateescape``) so that one bad byte
    rejects its record, not the file."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self.count = 0
        self._taken: list[str] = []

    def __iter__(self) -> _RecordLines:
        return self

    def __next__(self) -> str:
        text = next(self._lines).decode("utf-8", "surrogateescape")
        if self.count == 0:
            text = text.removeprefix(_BOM)
        self.count += 1
        self._taken.append(text)
        return text

    def take(self) -> str:
        """The lines read since the last take, without the final line end."""
        text = "".join(self._taken)
        self._taken.clear()
        return text.removesuffix("\n").removesuffix("\r")


def _bad_utf8(text: str) -> str | None:
    """The reject reason when ``text`` holds bytes that were not UTF-8, else None."""
    data = text.encode("utf-8", "surrogateescape")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        return f"invalid UTF-8: byte 0x{bad} at offset {exc.start}"
    return None


def _shown(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", errors="replace")


def _csv_header(path: str | Path, reader: Any, lines: _RecordLines,
                fields: FieldNames) -> list[str] | None:
    name = str(path)
    try:
        header = next(reader)
    except StopIteration:
        return None
    except csv.Error as exc:
        raise InputError(name, 1, None, f"header: invalid CSV: {exc}") from exc
    raw = lines.take()
    if (reason := _bad_utf8(raw)) is not None:
        raise InputError(name, 1, None, f"header: {reason}")
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise InputError(name, 1, None, f"header: duplicate columns: {', '.join(duplicates)}")
    _require_text_column(path, header, fields)
    return header


def _csv_rows(
    path: str | Path,
    delimiter: str,
    fields: FieldNames,
    allowed: frozenset[str] | None,
    max_chars: int,
) -> Iterator[Row | Reject]:
    """Rows of a CSV or TSV file with a header row. Cells are text; an empty label cell is no
    label (null in the output) and an empty id cell no id (the row number is used)."""
    csv.field_size_limit(max(csv.field_size_limit(), _FIELD_LIMIT))
    lines = _RecordLines(read_raw_lines(path))
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    header = _csv_header(path, reader, lines, fields)
    if header is None:
        return
    row_no = 0
    while True:
        start = lines.count + 1
        try:
            values = next(reader)
            problem = None
        except StopIteration:
            return
        except csv.Error as exc:
            values, problem = [], f"invalid CSV: {exc}"
        row_no += 1
        raw = lines.take()
        if problem is None and not raw.strip():
            problem = BLANK_LINE
        if problem is None:
            problem = _bad_utf8(raw)
        if problem is None and len(values) != len(header):
            problem = f"{len(values)} fields, the header has {len(header)}"
        if problem is not None:
            yield Reject(row_no, problem, None, _shown(raw), "row", start)
            continue
        record: dict[str, Any] = dict(zip(header, values, strict=True))
        label = record.get(fields.label)
        if label is not None and not label.strip():
            record[fields.label] = None
        if fields.id in record and not record[fields.id].strip():
            del record[fields.id]
        yield parse_record(row_no, record, fields, allowed, max_chars, raw, "row", start)


# --- Parquet and datasets -------------------------------------------------------------------


def _arrow_error(path: Path, what: str, exc: Exception) -> ValueError:
    return ValueError(f"{path}: not a readable {what}: {exc}")


def _pyarrow(path: Path, what: str) -> Any:
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise RuntimeError(f"{path}: reading {what} needs pyarrow: "
                           "pip install 'sidyp-prod[parquet]'") from exc
    return pa


def _parquet_batches(
    path: Path,
) -> tuple[list[str], Iterator[list[dict[str, Any]]], None]:
    pa = _pyarrow(path, "Parquet")
    import pyarrow.parquet as pq

    try:
        # Buffered reads: memory is bounded by the batch even within one large row group.
        file = pq.ParquetFile(path, buffer_size=_READ_BUFFER)
    except (pa.ArrowException, OSError) as exc:
        raise _arrow_error(path, "Parquet file", exc) from exc

    def batches() -> Iterator[list[dict[str, Any]]]:
        try:
            for batch in file.iter_batches(batch_size=BATCH_ROWS):
                yield batch.to_pylist()
        except pa.ArrowException as exc:
            raise _arrow_error(path, "Parquet file", exc) from exc
        finally:
            file.close()

    return list(file.schema_arrow.names), batches(), None


def _datasets_files(path: Path) -> list[Path]:
    """The Arrow files of a ``save_to_disk`` directory, in order."""
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        example = path / splits[0] if splits else path / "train"
        raise ValueError(f"{path}: a DatasetDict with splits {', '.join(splits)}; give one "
                         f"split's directory, e.g. {example}")
    state = path / "state.json"
    if not state.is_file():
        raise ValueError(f"{path}: a directory, but not a dataset saved with datasets' "
                         "save_to_disk (no state.json)")
    try:
        names = [item["filename"] for item in json.loads(state.read_text())["_data_files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{state}: not a datasets state file: {exc}") from exc
    return [path / name for name in names]


def _class_names(path: Path, column: str) -> list[str] | None:
    """The names of a ClassLabel column (labels stored as class indices), if it is one."""
    info = path / "dataset_info.json"
    if not info.is_file():
        return None
    feature = json.loads(info.read_text()).get("features", {}).get(column)
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
        return [str(n) for n in feature.get("names", [])]
    return None


def _datasets_batches(
    path: Path, label_column: str
) -> tuple[list[str], Iterator[list[dict[str, Any]]], list[str] | None]:
    pa = _pyarrow(path, "a datasets directory")
    files = _datasets_files(path)
    names: list[str] = []
    if files:
        try:
            with pa.memory_map(str(files[0])) as source:
                names = list(pa.ipc.open_stream(source).schema.names)
        except (pa.ArrowException, OSError) as exc:
            raise _arrow_error(files[0], "datasets Arrow file", exc) from exc

    def batches() -> Iterator[list[dict[str, Any]]]:
        for file in files:
            try:
                with pa.memory_map(str(file)) as source:
                    for batch in pa.ipc.open_stream(source):
                        yield batch.to_pylist()
            except (pa.ArrowException, OSError) as exc:
                raise _arrow_error(file, "datasets Arrow file", exc) from exc

    return names, batches(), _class_names(path, label_column)
