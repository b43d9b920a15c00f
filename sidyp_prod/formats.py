"""Output formats other than JSONL."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

BATCH_ROWS = 8192


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


def jsonl_to_parquet(source: Path, target: Path, batch_rows: int = BATCH_ROWS) -> None:
    """Convert refined JSONL to Parquet batch by batch (memory bounded by the batch).

    Column types are inferred from the first batch, except ``candidates``, a map from label to
    weight; a later row whose field has another type is an error naming the field.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        message = "Parquet output needs pyarrow: pip install 'sidyp-prod[parquet]'"
        raise RuntimeError(message) from exc
    tmp = target.with_name(target.name + ".tmp")
    writer = None
    try:
        for batch in _batches(source, batch_rows):
            if writer is None:
                schema = pa.Table.from_pylist(batch).schema
                candidates = schema.get_field_index("candidates")
                if candidates >= 0:
                    schema = schema.set(candidates, pa.field(
                        "candidates", pa.map_(pa.string(), pa.float64())))
                writer = pq.ParquetWriter(tmp, schema)
            try:
                table = pa.Table.from_pylist(batch, schema=writer.schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ValueError(f"{target}: rows do not share one schema: {exc}") from exc
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no rows: still a valid, empty file
        pq.write_table(pa.table({}), tmp)
    os.replace(tmp, target)
