"""Streaming readers: yield one `RawRow` per input row without loading a whole file.

JSONL (optionally gzip), JSON arrays (streamed with ijson), Parquet (record batches), Hugging Face
`datasets` directories (`save_to_disk` output, memory-mapped) and directories of such files.
A row that cannot be read is yielded with an `error` reason instead of raising.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ijson
import pyarrow.parquet as pq

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
SUPPORTED = JSON_SUFFIXES + (".parquet",)


@dataclass
class RawRow:
    source: str  # file name (and split) the row came from
    index: int  # row number within the source, from 0
    value: object = None  # the decoded row
    error: str | None = None  # reason code when the row could not be read
    detail: str = ""
    raw: bytes | None = None  # the undecodable bytes, when there are some


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def read_jsonl(path: Path, max_line_bytes: int, start_offset: int = 0, start_index: int = 0
               ) -> Iterator[RawRow]:
    """JSON lines from byte `start_offset` on (rows numbered from `start_index`): incremental
    runs read only what was appended since the last version."""
    source = path.name
    with _open(path) as f:
        if start_offset:
            f.seek(start_offset)
        index = start_index
        while True:
            try:
                line = f.readline(max_line_bytes + 1)
            except (EOFError, OSError, gzip.BadGzipFile) as err:
                yield RawRow(source, index, error="truncated_file", detail=str(err))
                return
            if not line:
                return
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                head = line[:1024]
                skipped = len(line)
                while line and not line.endswith(b"\n"):  # consume the rest of the line
                    line = f.readline(1 << 20)
                    skipped += len(line)
                yield RawRow(source, index, error="oversize_line", raw=head,
                             detail=f"line of {skipped} bytes exceeds max_line_bytes={max_line_bytes}")
                index += 1
                continue
            if not line.strip():
                yield RawRow(source, index, error="blank_line")
                index += 1
                continue
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as err:
                yield RawRow(source, index, error="undecodable_bytes", detail=str(err), raw=line)
                index += 1
                continue
            try:
                yield RawRow(source, index, value=json.loads(decoded))
            except (json.JSONDecodeError, RecursionError) as err:
                yield RawRow(source, index, error="bad_json", detail=str(err), raw=line[:65536])
            index += 1


def is_json_array(path: Path) -> bool:
    """A `.json[.gz]` file whose first non-blank byte is `[` is one JSON array; anything else
    (and every `.jsonl`/`.ndjson` file) is JSON lines."""
    if not path.name.endswith((".json", ".json.gz")):
        return False
    try:
        with _open(path) as f:
            head = f.read(4096).lstrip()
    except (EOFError, OSError):
        return False
    return head.startswith(b"[")


def read_json_array(path: Path) -> Iterator[RawRow]:
    source = path.name
    index = 0
    with _open(path) as f:
        try:
            for item in ijson.items(f, "item", use_float=True):
                yield RawRow(source, index, value=item)
                index += 1
        except (ijson.JSONError, UnicodeDecodeError, ValueError) as err:
            # The rest of the file cannot be parsed: quarantine it as one row with the reason.
            yield RawRow(source, index, error="bad_json", detail=f"unparseable from item {index}: {err}")


def read_parquet(path: Path, batch_rows: int = 1000) -> Iterator[RawRow]:
    index = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                yield RawRow(path.name, index, value=row)
                index += 1
    except Exception as err:  # noqa: BLE001 - a corrupt file is quarantined, not fatal
        yield RawRow(path.name, index, error="unreadable_file", detail=f"{type(err).__name__}: {err}")


def is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("state.json", "dataset_dict.json"))


def read_hf_dataset(path: Path, batch_rows: int = 1000) -> Iterator[RawRow]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    for split, ds in splits:
        source = f"{path.name}:{split}" if split else path.name
        index = 0
        for batch in ds.iter(batch_size=batch_rows):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns)):
                yield RawRow(source, index, value=dict(zip(columns, values)))
                index += 1


def input_files(path: Path) -> list[Path]:
    """The files an input path stands for, in a fixed order."""
    if path.is_file() or is_hf_dataset_dir(path):
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUPPORTED))
    raise FileNotFoundError(path)


def read_rows(path: Path, max_line_bytes: int = 8 << 20, start_offset: int = 0, start_index: int = 0
              ) -> Iterator[RawRow]:
    """Every row of an input path (file, HF dataset directory, or directory of files).

    `start_offset`/`start_index` resume a JSON-lines file where an earlier version stopped."""
    if start_offset:
        yield from read_jsonl(Path(path), max_line_bytes, start_offset, start_index)
        return
    for file in input_files(Path(path)):
        name = file.name
        if is_hf_dataset_dir(file):
            yield from read_hf_dataset(file)
        elif name.endswith(".parquet"):
            yield from read_parquet(file)
        elif name.endswith(JSON_SUFFIXES):
            if is_json_array(file):
                yield from read_json_array(file)
            else:
                yield from read_jsonl(file, max_line_bytes)
        else:
            yield RawRow(name, 0, error="unsupported_file", detail=f"unsupported file type: {name}")
