"""Reading a corpus robustly (every bad row becomes a Reject) and writing outputs atomically.

Accounting invariant: ``iter_corpus`` yields exactly one ``Row`` or ``Reject`` per input row (a
JSONL line, blank and whitespace-only lines included: they are rejected with reason
``"blank line"``; a CSV record; a Parquet or ``datasets`` row), so ``input rows == rows +
rejects`` always holds and ``count_lines`` gives a JSONL file's total up front. Formats other
than JSONL are read by :mod:`sidyp_prod.readers`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "AtomicWriter",
    "FieldNames",
    "InputError",
    "Reject",
    "Row",
    "count_lines",
    "default_rejects_path",
    "iter_corpus",
    "label_set_from_rows",
    "open_binary",
    "parse_label_set",
    "parse_line",
    "parse_record",
    "read_raw_lines",
    "strip_line_end",
]

STDIO = "-"
BLANK_LINE = "blank line"
_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FieldNames:
    """Names of the input fields holding the text, the LLM label and the row id."""

    text: str = "text"
    label: str = "label"
    id: str = "id"


@dataclass
class Row:
    """One usable input line."""

    line_no: int
    record: dict[str, Any]
    id: str | int
    text: str
    label: str | int | None  # an integer label stays an integer (label_set_from_rows)


@dataclass
class Reject:
    """One unusable input row and why.

    ``line_no`` is the row's position in the input (1 for the first row): the line for JSONL
    (``unit`` "line"), the record or row number for the other formats (``unit`` "row", the
    header not counted); ``first_line`` is where a CSV record starts in the file.
    """

    line_no: int
    reason: str
    field: str | None
    raw: str
    unit: str = "line"
    first_line: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The line of the rejects file: ``{"line": N, ...}`` for JSONL, ``{"row": N, ...}``
        (and the CSV record's first ``line``) for the other formats."""
        where: dict[str, Any] = {self.unit: self.line_no}
        if self.first_line is not None:
            where["line"] = self.first_line
        return {**where, "reason": self.reason, "field": self.field, "raw": self.raw}


class InputError(ValueError):
    """Raised in strict mode; message names the file, the line (or row) and the field, e.g.
    'corpus.jsonl:17: field "text": missing' or 'corpus.csv: row 17 (line 19): ...'."""

    def __init__(self, path: str, line_no: int, field: str | None, reason: str,
                 unit: str = "line", first_line: int | None = None) -> None:
        if unit == "line":
            where = f"{path}:{line_no}"
        else:
            where = f"{path}: {unit} {line_no}"
            if first_line is not None:
                where += f" (line {first_line})"
        super().__init__(f"{where}: {reason}")
        self.path = path
        self.line_no = line_no
        self.field = field
        self.reason = reason
        self.unit = unit
        self.first_line = first_line

    @classmethod
    def of(cls, path: str | Path, reject: Reject) -> InputError:
        """The strict-mode error for one reject."""
        return cls(_display_name(path), reject.line_no, reject.field, reject.reason,
                   reject.unit, reject.first_line)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default pickling would call __init__ with the message only.
        return (type(self), (self.path, self.line_no, self.field, self.reason, self.unit,
                             self.first_line))


def _display_name(path: str | Path) -> str:
    return "<stdin>" if str(path) == STDIO else str(path)


def _is_gzip(path: str | Path) -> bool:
    return str(path).endswith(".gz")


def _is_zstd(path: str | Path) -> bool:
    return str(path).endswith(".zst")


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def parse_label_set(spec: str | None) -> list[str] | None:
    """--labels value: None -> None; an existing file path -> one label per non-blank line (or a
    JSON list if the file is .json); otherwise a comma-separated list (strip blanks). Duplicates
    are an error (ValueError). Order is kept. Ints in a JSON list become str(int)."""
    if spec is None:
        return None
    path = Path(spec)
    labels: list[str]
    if path.is_file():
        text = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".json":
            try:
                values = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{spec}: invalid JSON: {exc}") from exc
            if not isinstance(values, list):
                raise ValueError(
                    f"{spec}: expected a JSON list of labels, got {_json_type(values)}"
                )
            labels = []
            for value in values:
                if isinstance(value, bool) or not isinstance(value, str | int):
                    raise ValueError(
                        f"{spec}: labels must be strings or integers, got {_json_type(value)}"
                    )
                label = str(value)
                if not label.strip():
                    raise ValueError(f"{spec}: blank label")
                labels.append(label)
        else:
            labels = [line.strip() for line in text.splitlines() if line.strip()]
        source = spec
    else:
        labels = [part.strip() for part in spec.split(",") if part.strip()]
        source = "--labels"
    if not labels:
        raise ValueError(f"{source}: empty label set")
    seen: set[str] = set()
    duplicates: set[str] = set()
    for label in labels:
        if label in seen:
            duplicates.add(label)
        seen.add(label)
    if duplicates:
        raise ValueError(f"{source}: duplicate labels: {', '.join(sorted(duplicates))}")
    return labels


class _ZstdFrames(io.RawIOBase):
    """A .zst file's frames, decompressed one after another. A stream cut inside a frame or
    not zstd at all raises OSError: zstandard's own stream reader ends quietly at a cut
    frame, which would read as the end of the corpus and drop its remaining rows."""

    def __init__(self, path: str | Path, zstandard: Any) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed with this reader
        self._decompressor = zstandard.ZstdDecompressor()
        self._error = zstandard.ZstdError
        self._frame: Any = None  # the frame being decompressed (None: between frames)
        self._pending = b""
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._out:
            if not self._pending:
                self._pending = self._file.read(1 << 16)
                if not self._pending:
                    if self._frame is not None:
                        raise OSError("the stream ends inside a frame (a cut file?)")
                    return 0
            if self._frame is None:
                self._frame = self._decompressor.decompressobj()
            try:
                self._out = self._frame.decompress(self._pending)
            except self._error as exc:
                raise OSError(str(exc)) from exc
            self._pending = b""
            if self._frame.eof:
                self._pending, self._frame = self._frame.unused_data, None
        size = min(len(buffer), len(self._out))
        buffer[:size] = self._out[:size]
        self._out = self._out[size:]
        return size

    def close(self) -> None:
        self._file.close()
        super().close()


def _open_zstd(path: str | Path) -> IO[bytes]:
    try:
        import zstandard
    except ImportError as exc:
        raise RuntimeError(f"{path}: reading .zst needs zstandard: "
                           "pip install 'sidyp-prod[zstd]'") from exc
    return io.BufferedReader(_ZstdFrames(path, zstandard), 1 << 16)


def open_binary(path: str | Path) -> tuple[IO[bytes], bool]:
    """The input stream (``-`` is stdin; ``.gz`` and ``.zst`` are decompressed) and whether
    we own (must close) it."""
    if str(path) == STDIO:
        return sys.stdin.buffer, False
    if _is_gzip(path):
        return gzip.open(path, "rb"), True
    if _is_zstd(path):
        return _open_zstd(path), True
    return open(path, "rb"), True


def read_raw_lines(path: str | Path) -> Iterator[bytes]:
    """Binary lines with their terminator; a corrupt gzip or zstd stream becomes an
    InputError naming the line it broke at."""
    stream, owned = open_binary(path)
    line_no = 0
    try:
        lines = iter(stream)
        while True:
            try:
                line = next(lines)
            except StopIteration:
                return
            except (OSError, EOFError, zlib.error) as exc:
                kind = "gzip" if _is_gzip(path) else "zstd" if _is_zstd(path) else None
                if kind is None:
                    raise
                raise InputError(
                    _display_name(path), line_no + 1, None, f"corrupt {kind} stream: {exc}"
                ) from exc
            line_no += 1
            yield line
    finally:
        if owned:
            stream.close()


def _read_lines(path: str | Path) -> Iterator[bytes]:
    """Binary lines without their terminator (see :func:`read_raw_lines`)."""
    for line in read_raw_lines(path):
        yield strip_line_end(line)


def strip_line_end(line: bytes) -> bytes:
    r"""A line without its ``\n`` or ``\r\n`` terminator (every reader splits lines this way)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def _unpaired_surrogate(text: str) -> str | None:
    """What is wrong with a text that holds half of a UTF-16 surrogate pair, or None.

    JSON's ``\\ud800``-style escapes decode to one when the other half is missing; it is no
    Unicode character, so no tokenizer encodes it (the text is invalid input, like invalid UTF-8).
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"not valid Unicode: unpaired surrogate \\u{ord(text[exc.start]):04x} at "
                f"character {exc.start + 1}")
    return None


def _field_reject(line_no: int, field: str, problem: str, raw: str) -> Reject:
    return Reject(line_no, f'field "{field}": {problem}', field, raw)


def parse_line(
    line_no: int,
    data: bytes,
    fields: FieldNames,
    allowed: frozenset[str] | None,
    max_chars: int = 100_000,
) -> Row | Reject:
    """Turn one raw line (terminator removed) into a Row or a Reject.

    Public so that readers other than :func:`iter_corpus` (the Ray engine's line reader) apply
    the very same validation; ``line_no`` 1 may start with a BOM.
    """
    if line_no == 1 and data.startswith(_BOM):
        # Editors on Windows prepend a BOM; json.loads would reject the first line for it.
        data = data[len(_BOM) :]
    try:
        line = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raw = data.decode("utf-8", errors="replace")
        bad = data[exc.start : exc.start + 1].hex()
        return Reject(line_no, f"invalid UTF-8: byte 0x{bad} at offset {exc.start}", None, raw)
    if not line.strip():
        return Reject(line_no, BLANK_LINE, None, line)
    try:
        record = json.loads(line, parse_constant=_non_finite)
    except json.JSONDecodeError as exc:
        return Reject(line_no, f"invalid JSON: {exc.msg} (col {exc.colno})", None, line)
    except RecursionError:
        return Reject(line_no, "invalid JSON: nested too deeply", None, line)
    if not isinstance(record, dict):
        return Reject(
            line_no, f"JSON value is not an object (got {_json_type(record)})", None, line
        )
    return _check_record(line_no, record, fields, allowed, max_chars, line)


def parse_record(
    line_no: int,
    record: dict[str, Any],
    fields: FieldNames,
    allowed: frozenset[str] | None,
    max_chars: int,
    raw: str,
    unit: str = "line",
    first_line: int | None = None,
) -> Row | Reject:
    """Check one record's text, label and id fields: the validation every format shares.

    ``raw`` is what a reject shows of the row; ``unit`` and ``first_line`` say where it is
    (:class:`Reject`).
    """
    item = _check_record(line_no, record, fields, allowed, max_chars, raw)
    if isinstance(item, Reject):
        item.unit, item.first_line = unit, first_line
    return item


def _check_record(
    line_no: int,
    record: dict[str, Any],
    fields: FieldNames,
    allowed: frozenset[str] | None,
    max_chars: int,
    line: str,
) -> Row | Reject:
    if fields.text not in record:
        return _field_reject(line_no, fields.text, "missing", line)
    text = record[fields.text]
    if not isinstance(text, str):
        return _field_reject(
            line_no, fields.text, f"expected a string, got {_json_type(text)}", line
        )
    if not text.strip():
        return _field_reject(line_no, fields.text, "blank", line)
    surrogate = _unpaired_surrogate(text)
    if surrogate is not None:
        return _field_reject(line_no, fields.text, surrogate, line)
    if len(text) > max_chars:
        text = text[:max_chars]

    raw_label = record.get(fields.label)
    if isinstance(raw_label, bool) or not (raw_label is None or isinstance(raw_label, str | int)):
        problem = f"expected a string, integer or null, got {_json_type(raw_label)}"
        return _field_reject(line_no, fields.label, problem, line)
    label: str | int | None = raw_label
    if label is not None and allowed is not None and label not in allowed:
        # 1 and "1" are one label: the label set's spelling wins (a bundle of string labels
        # keeps reading integer labels as it always did).
        other = _other_spelling(label)
        if other is None or other not in allowed:
            problem = f"{json.dumps(label, ensure_ascii=False)} is not in the label set"
            return _field_reject(line_no, fields.label, problem, line)
        label = other

    row_id: str | int = line_no
    if fields.id in record:
        raw_id = record[fields.id]
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            problem = f"expected a string or integer, got {_json_type(raw_id)}"
            return _field_reject(line_no, fields.id, problem, line)
        row_id = raw_id

    return Row(line_no=line_no, record=record, id=row_id, text=text, label=label)


def _other_spelling(label: str | int) -> str | int | None:
    """An integer label as a string, or a string of an integer as the integer."""
    if isinstance(label, int):
        return str(label)
    try:
        value = int(label)
    except ValueError:
        return None
    return value if str(value) == label else None


def iter_corpus(
    path: str | Path,
    fields: FieldNames = FieldNames(),  # frozen, so sharing the default is safe
    labels: Sequence[str] | None = None,
    strict: bool = False,
    max_chars: int = 100_000,
    input_format: str | None = None,
) -> Iterator[Row | Reject]:
    """Yield one Row or Reject per input row, in file order.

    JSONL: blank and whitespace-only lines are yielded as Reject(reason="blank line") so that
    input lines = rows + rejects always holds. The file is streamed in binary line by line, so
    memory does not grow with its size. ``path`` may be ``'-'`` (stdin), a ``.gz`` or a ``.zst``
    file. CSV, TSV, Parquet and a ``datasets`` directory (``input_format``, else from the name:
    :func:`sidyp_prod.readers.detect_format`) are streamed by :mod:`sidyp_prod.readers`, one
    Row or Reject per record or row. Texts longer than ``max_chars`` are truncated, not
    rejected. Null or missing labels give ``label=None``. With ``strict=True`` the first reject
    raises InputError instead; a corrupt compressed stream raises InputError in either mode.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    allowed = frozenset(labels) if labels is not None else None
    from .readers import detect_format, iter_rows

    kind = detect_format(path, input_format)
    if kind != "jsonl":
        return _strict(path, iter_rows(path, kind, fields, allowed, max_chars), strict)
    return _iter_corpus(path, fields, allowed, strict, max_chars)


def _strict(
    path: str | Path, items: Iterator[Row | Reject], strict: bool
) -> Iterator[Row | Reject]:
    for item in items:
        if strict and isinstance(item, Reject):
            raise InputError.of(path, item)
        yield item


def _iter_corpus(
    path: str | Path,
    fields: FieldNames,
    allowed: frozenset[str] | None,
    strict: bool,
    max_chars: int,
) -> Iterator[Row | Reject]:
    for line_no, data in enumerate(_read_lines(path), start=1):
        item = parse_line(line_no, data, fields, allowed, max_chars)
        if strict and isinstance(item, Reject):
            raise InputError(_display_name(path), item.line_no, item.field, item.reason)
        yield item


def count_lines(path: str | Path) -> int | None:
    """Number of lines (fast, binary chunked count; counts a final line without trailing
    newline); None for '-' (stdin), gzip or zstd."""
    if str(path) == STDIO or _is_gzip(path) or _is_zstd(path):
        return None
    count = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def label_set_from_labels(labels: Iterable[Any]) -> list[str] | list[int]:
    """The label set of these distinct labels, typed as :func:`label_set_from_rows` types it."""
    distinct = {label for label in labels if label is not None}
    if all(isinstance(label, int) for label in distinct):
        return sorted(distinct)  # type: ignore[type-var]
    return sorted({str(label) for label in distinct})


def label_set_from_rows(rows: Iterable[Row | Reject]) -> list[str] | list[int]:
    """Sorted unique non-None labels (Rejects, if any are passed, are ignored). Integers when
    every label is an integer (sorted as numbers); otherwise strings, and the rows' integer
    labels become strings too, so that each row's label is in the set."""
    found = [row for row in rows if isinstance(row, Row) and row.label is not None]
    labels = {row.label for row in found}
    if all(isinstance(label, int) for label in labels):
        return sorted(labels)  # type: ignore[type-var]
    for row in found:
        row.label = str(row.label)
    return sorted({str(label) for label in labels})


def _non_finite(name: str) -> None:
    """NaN and +-Infinity are not JSON, though Python's json writes them: read as null, as a
    Parquet or pandas NaN is, so that the output stays strict JSON."""
    return None


def json_line(obj: dict[str, Any]) -> str:
    """One compact JSON line, ensure_ascii=False, keys in insertion order."""
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (valid as JSON \\u escapes in the input) cannot be encoded raw.
        text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
    return text + "\n"


class AtomicWriter:
    """Context manager writing a text file atomically: writes to '<final>.partial-<pid>' in the
    same directory, flushes+fsyncs and os.replace()s onto the final path only on commit() / clean
    __exit__; on exception the temp file is removed and the final path is untouched. path '-'
    writes to sys.stdout without temp file."""

    def __init__(self, path: str | Path, encoding: str = "utf-8") -> None:
        self._stdout = str(path) == STDIO
        self.path = Path(path)
        self.tmp_path: Path | None = None
        self._done = False
        if self._stdout:
            self._fh: IO[str] = sys.stdout
        else:
            self.tmp_path = self.path.with_name(f"{self.path.name}.partial-{os.getpid()}")
            # newline="\n": outputs are byte-identical across platforms.
            self._fh = open(self.tmp_path, "w", encoding=encoding, newline="\n")  # noqa: SIM115

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.commit()

    def write(self, text: str) -> None:
        """Write raw text."""
        if self._done:
            raise ValueError(f"{self.path}: write after commit/abort")
        self._fh.write(text)

    def write_json(self, obj: dict[str, Any]) -> None:
        """Write one compact JSON line (see :func:`json_line`)."""
        self.write(json_line(obj))

    def commit(self) -> None:
        """Flush, fsync and move the temp file onto the final path (idempotent)."""
        if self._done:
            return
        self._done = True
        if self._stdout:
            self._fh.flush()
            return
        assert self.tmp_path is not None
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self.tmp_path, self.path)
        except BaseException:
            self._discard()
            raise
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Drop the temp file; the final path is left as it was."""
        if self._done:
            return
        self._done = True
        if self._stdout:
            self._fh.flush()
            return
        self._discard()

    def _discard(self) -> None:
        assert self.tmp_path is not None
        # Closing flushes, which can fail (disk full); the file is removed anyway.
        with contextlib.suppress(OSError):
            self._fh.close()
        self.tmp_path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable; not every platform can open a directory, so best effort."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def default_rejects_path(out_path: str | Path) -> Path:
    """'out.jsonl' -> 'out.rejects.jsonl' next to it; for '-' -> Path('rejects.jsonl') in cwd."""
    if str(out_path) == STDIO:
        return Path("rejects.jsonl")
    out = Path(out_path)
    name = out.name[: -len(".gz")] if out.name.endswith(".gz") else out.name
    stem = Path(name).stem if Path(name).suffix else name
    return out.with_name(f"{stem}.rejects.jsonl")


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
