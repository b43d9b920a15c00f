"""Resumable, crash-safe output for streamed refinement.

Rows are appended to ``OUT.partial`` (and rejects to ``REJECTS.partial``); after every chunk both
are flushed and fsynced and a small journal (``OUT.journal.json``) records how many input lines
are done and how many bytes each partial file holds. A killed run resumes from the journal: the
partial files are cut back to the recorded sizes and the input is skipped to the recorded line,
so the finished output is byte-identical to an uninterrupted run. Only a finished run renames the
partial file to the final path; an unfinished output never looks complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from .corpus import Reject, Row, json_line

JOURNAL_VERSION = 1


class ResumeError(RuntimeError):
    """The journal is missing or belongs to another run."""


@dataclass
class Progress:
    lines: int = 0  # input lines consumed (rows written + rows rejected)
    refined: int = 0
    rejected: int = 0
    changed: int = 0
    filled: int = 0  # rows without an LLM label (given_label null)
    output_bytes: int = 0
    rejects_bytes: int = 0


def _fsync_write(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _append_chunk(
    progress: Progress,
    write_record: Callable[[str], Any],
    rejects_file: IO[bytes],
    records: Iterable[dict],
    rejects: Iterable[dict],
) -> None:
    """Write one chunk's rows and rejects as JSON lines and count them."""
    for record in records:
        write_record(json_line(record))
        progress.refined += 1
        progress.changed += bool(record.get("is_label_issue"))
        progress.filled += record.get("given_label") is None
    for reject in rejects:
        rejects_file.write(json_line(reject).encode("utf-8"))
        progress.rejected += 1


def _place_rejects(partial: Path, final: Path, progress: Progress) -> None:
    """A finished run keeps its rejects file only when something was rejected (and removes an
    earlier run's, which would count rows twice)."""
    if progress.rejected:
        os.replace(partial, final)
    else:
        partial.unlink()
        final.unlink(missing_ok=True)


def journal_path(out: str | Path) -> Path:
    """The progress journal of a refine to ``out``: it exists while a run can be resumed."""
    out = Path(out)
    return out.with_name(out.name + ".journal.json")


class ResumableOutput:
    """JSONL output (and rejects) written chunk by chunk with a progress journal."""

    def __init__(self, out: Path, rejects: Path, identity: dict[str, Any], resume: bool):
        self.out, self.rejects = out, rejects
        self.partial = out.with_name(out.name + ".partial")
        self.rejects_partial = rejects.with_name(rejects.name + ".partial")
        self.journal = journal_path(out)
        self.identity = identity
        self.progress = Progress()
        self.notice: str | None = None
        if resume and not self.journal.is_file():
            # Killed before its first chunk, or never run: a retry loop can always pass --resume.
            self.notice = (f"{out}: nothing to resume (no {self.journal.name}): "
                           "started from the beginning")
            resume = False
        if resume:
            self.progress = self._load_journal()
        mode = "r+b" if resume else "wb"
        self._out = open(self.partial, mode)  # noqa: SIM115 - closed in finish()/close()
        self._rejects = open(self.rejects_partial, mode)  # noqa: SIM115
        if resume:
            # Drop whatever a killed run wrote after its last completed chunk.
            for handle, size in ((self._out, self.progress.output_bytes),
                                 (self._rejects, self.progress.rejects_bytes)):
                handle.truncate(size)
                handle.seek(size)

    def _load_journal(self) -> Progress:
        state = json.loads(self.journal.read_text())
        before = state.get("identity") or {}
        if before != self.identity:
            differ = sorted(k for k in {*before, *self.identity}
                            if before.get(k) != self.identity.get(k))
            raise ResumeError(
                f"{self.out}: the unfinished run used other inputs or settings "
                f"({', '.join(differ)} differ); start again without --resume"
            )
        for path, key in ((self.partial, "output_bytes"), (self.rejects_partial, "rejects_bytes")):
            if not path.is_file() or path.stat().st_size < state["progress"][key]:
                raise ResumeError(f"{path}: shorter than its journal says; cannot resume")
        return Progress(**state["progress"])

    def write_chunk(self, records: Iterable[dict], rejects: Iterable[dict], lines: int) -> None:
        """Append one chunk's rows and rejects, make them durable, then advance the journal."""
        _append_chunk(self.progress, lambda line: self._out.write(line.encode("utf-8")),
                      self._rejects, records, rejects)
        _fsync_write(self._out)
        _fsync_write(self._rejects)
        self.progress.lines = lines
        self.progress.output_bytes = self._out.tell()
        self.progress.rejects_bytes = self._rejects.tell()
        state = {"version": JOURNAL_VERSION, "identity": self.identity,
                 "progress": asdict(self.progress)}
        tmp = self.journal.with_name(self.journal.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.journal)

    def finish(self, convert: Any = None) -> None:
        """Move the finished files into place (``convert(partial, final)`` for other formats)."""
        self._out.close()
        self._rejects.close()
        if convert is None:
            os.replace(self.partial, self.out)
        else:
            convert(self.partial, self.out)
            self.partial.unlink()
        _place_rejects(self.rejects_partial, self.rejects, self.progress)
        self.journal.unlink(missing_ok=True)

    def close(self, discard: bool = False) -> None:
        """Stop without finishing: the partial files and the journal stay for --resume, unless
        ``discard`` (a refusal: resuming cannot help) or no chunk was recorded yet."""
        self._out.close()
        self._rejects.close()
        if discard or not self.journal.is_file():
            for path in (self.partial, self.rejects_partial, self.journal):
                path.unlink(missing_ok=True)


class StdoutOutput:
    """Rows to standard output as they are refined; rejects still go to a file."""

    def __init__(self, rejects: Path):
        import sys

        self.progress = Progress()
        self.rejects = rejects
        self._stdout = sys.stdout
        self._rejects = open(rejects.with_name(rejects.name + ".partial"), "wb")  # noqa: SIM115

    def write_chunk(self, records: Iterable[dict], rejects: Iterable[dict], lines: int) -> None:
        _append_chunk(self.progress, self._stdout.write, self._rejects, records, rejects)
        self._stdout.flush()
        self.progress.lines = lines

    def finish(self, convert: Any = None) -> None:
        self._rejects.close()
        _place_rejects(Path(self._rejects.name), self.rejects, self.progress)

    def close(self, discard: bool = False) -> None:
        self._rejects.close()
        Path(self._rejects.name).unlink(missing_ok=True)


def refine_in_chunks(
    items: Iterable[Row | Reject],
    sink: ResumableOutput | StdoutOutput,
    refine: Callable[[list[Row]], list[dict]],
    chunk_size: int,
    observe: Callable[[Row | Reject], None],
    on_chunk: Callable[[int], None],
) -> None:
    """Refine ``items`` into ``sink`` ``chunk_size`` rows at a time (rejects pass through in
    input order), skipping the input lines the sink already holds (a resumed run).
    ``observe`` sees every item, the skipped ones too (a resumed run's warnings and exit code
    are an uninterrupted run's); ``on_chunk`` the number of lines each chunk took."""
    done = sink.progress.lines
    rows: list[Row] = []
    rejected: list[dict] = []
    line = done

    def flush() -> None:
        sink.write_chunk(refine(rows), rejected, line)
        on_chunk(len(rows) + len(rejected))
        rows.clear()
        rejected.clear()

    for item in items:
        observe(item)
        if item.line_no <= done:
            continue
        line = item.line_no
        if isinstance(item, Reject):
            rejected.append(item.to_json())
        else:
            rows.append(item)
        if len(rows) >= chunk_size:
            flush()
    if rows or rejected:
        flush()
