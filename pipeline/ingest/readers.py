"""Streaming readers: yield one `RawRow` per input row without loading a whole file.

JSONL (optionally gzip), JSON arrays (streamed with ijson; also a pretty-printed array saved as
`.jsonl`), Parquet (record batches), Hugging Face `datasets` directories (`save_to_disk` output,
memory-mapped) and directories of such files. A leading UTF-8 BOM is skipped. A row that cannot be
read is yielded with an `error` reason instead of raising.
"""

from __future__ import annotations

import codecs
import errno
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ijson
import pyarrow.parquet as pq
from ijson.common import ObjectBuilder

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
ARRAY_SUFFIXES = (".json", ".json.gz")
SUPPORTED = JSON_SUFFIXES + (".parquet",)
READ_ERRORS = (EOFError, OSError, zlib.error)  # truncated or corrupt (gzip) files
BOM = codecs.BOM_UTF8
MAX_DEPTH = 512  # JSON array items nested deeper are quarantined
NESTING = {"start_map": 1, "start_array": 1, "end_map": -1, "end_array": -1}
TOO_DEEP = object()


class InputPathError(OSError):
    """An input path that cannot be read at all (missing, a symlink loop, ...): one clear line."""


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


def _open_json(path: Path):
    """`_open`, positioned after a leading UTF-8 BOM when there is one."""
    f = _open(path)
    try:
        if f.read(len(BOM)) != BOM:
            f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


def source_name(path: Path) -> str:
    """The file name as valid text (bytes that are not UTF-8 replaced), for the `source` column."""
    return os.fsencode(path.name).decode("utf-8", "replace")


def path_problem(path: Path) -> str | None:
    """Why `path` cannot be read at all, in words (`symlink loop`, ...), or None when it can."""
    try:
        os.stat(path)
    except ValueError:
        return "invalid path (it contains a NUL byte)"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop (too many levels of symbolic links)"
        if err.errno == errno.ENOENT:
            return "broken symlink (its target does not exist)" if os.path.islink(path) \
                else "no such file or directory"
        return (err.strerror or type(err).__name__).lower()
    return None


def parse_json_line(line: bytes) -> object:
    """One JSON value from one line (BOM skipped); ValueError/RecursionError when it is not one."""
    return json.loads(line.decode("utf-8-sig"))


def read_jsonl(path: Path, max_line_bytes: int, start_offset: int = 0, start_index: int = 0
               ) -> Iterator[RawRow]:
    """JSON lines from byte `start_offset` on (rows numbered from `start_index`): incremental
    runs read only what was appended since the last version."""
    source = source_name(path)
    with _open(path) as f:
        if start_offset:
            f.seek(start_offset)
        index = start_index
        while True:
            try:
                line = f.readline(max_line_bytes + 1)
            except READ_ERRORS as err:
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
            yield _json_row(source, index, line)
            index += 1


def _json_row(source: str, index: int, line: bytes) -> RawRow:
    """The row of one non-oversize line: its value, or the reason it has none."""
    if not line.removeprefix(BOM).strip():
        return RawRow(source, index, error="blank_line")
    try:
        return RawRow(source, index, value=parse_json_line(line))
    except UnicodeDecodeError as err:
        return RawRow(source, index, error="undecodable_bytes", detail=str(err), raw=line)
    except json.JSONDecodeError as err:
        return RawRow(source, index, error="bad_json", detail=str(err), raw=line[:65536])
    except (ValueError, RecursionError) as err:  # an integer literal too long to convert, deep nesting
        detail = f"number out of range: {str(err).split(';')[0]}" if isinstance(err, ValueError) else str(err)
        return RawRow(source, index, error="bad_json", detail=detail, raw=line[:65536])


def _unfinished_json(line: bytes, max_line_bytes: int) -> bool:
    """Whether a line is the start of a JSON value that goes on over later lines (`[`, `[{"a": 1,`),
    not a whole value (valid or not) of its own."""
    if len(line) > max_line_bytes:
        return False  # too long to tell: JSON lines (it will be an oversize_line)
    try:
        text = line.decode("utf-8").rstrip()
        json.loads(text)
    except json.JSONDecodeError as err:
        return err.pos >= len(text)
    except (ValueError, RecursionError):  # undecodable bytes, a too long integer, deep nesting
        return False
    return False


def is_json_array(path: Path, max_line_bytes: int = 8 << 20) -> bool:
    """Whether a JSON file is one JSON array rather than JSON lines.

    A `.json[.gz]` file whose first non-blank byte is `[` is an array. So is a `.jsonl`/`.ndjson`
    file whose first non-blank line starts with `[` but is not a JSON value on its own (a
    pretty-printed array saved as JSON lines); a whole array on the first line is one JSONL row.
    """
    if not path.name.endswith(JSON_SUFFIXES):
        return False
    try:
        with _open_json(path) as f:
            start = f.tell()
            head = f.read(4096)
            body = head.lstrip()
            if not body.startswith(b"["):
                return False
            if path.name.endswith(ARRAY_SUFFIXES):
                return True
            f.seek(start + len(head) - len(body))
            line = f.readline(max_line_bytes + 1)
    except READ_ERRORS:
        return False
    return _unfinished_json(line, max_line_bytes)


def array_items(f) -> Iterator[object]:
    """The items of the top-level JSON array in `f`, built from ijson's flat events so memory stays
    linear in nesting depth; an item nested deeper than `MAX_DEPTH` is yielded as `TOO_DEEP`."""
    events = ijson.basic_parse(f, use_float=True)
    if next(events, ("", None))[0] != "start_array":
        raise ValueError("not a JSON array")
    depth, builder = 0, None
    for event, value in events:
        if depth == 0:
            if event == "end_array":
                break
            builder = ObjectBuilder()
        depth += NESTING.get(event, 0)
        if builder is not None:
            builder.event(event, value)
            if depth > MAX_DEPTH:
                builder = None
        if depth == 0:
            yield TOO_DEEP if builder is None else builder.value
    for _ in events:  # anything after the array is an error, as for ijson.items
        pass


def read_json_array(path: Path) -> Iterator[RawRow]:
    source = source_name(path)
    index = 0
    with _open_json(path) as f:
        try:
            for item in array_items(f):
                if item is TOO_DEEP:
                    yield RawRow(source, index, error="too_deeply_nested",
                                 detail=f"item nested deeper than {MAX_DEPTH} levels")
                else:
                    yield RawRow(source, index, value=item)
                index += 1
        except (ijson.JSONError, ValueError, RecursionError, *READ_ERRORS) as err:
            # The rest of the file cannot be parsed: quarantine it as one row with the reason.
            first_line = str(err).strip().split("\n")[0]  # yajl appends a multi-line excerpt
            yield RawRow(source, index, error="bad_json",
                         detail=f"JSON array unparseable from item {index}: {first_line}")


def read_parquet(path: Path, batch_rows: int = 1000) -> Iterator[RawRow]:
    source = source_name(path)
    index = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=batch_rows):
            for row in batch.to_pylist():
                yield RawRow(source, index, value=row)
                index += 1
    except Exception as err:  # noqa: BLE001 - a corrupt file is quarantined, not fatal
        yield RawRow(source, index, error="unreadable_file", detail=f"{type(err).__name__}: {err}")


def is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("state.json", "dataset_dict.json"))


def read_hf_dataset(path: Path, batch_rows: int = 1000) -> Iterator[RawRow]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    for split, ds in splits:
        source = f"{source_name(path)}:{split}" if split else source_name(path)
        index = 0
        for batch in ds.iter(batch_size=batch_rows):
            columns = list(batch)
            for values in zip(*(batch[c] for c in columns)):
                yield RawRow(source, index, value=dict(zip(columns, values)))
                index += 1


def input_files(path: Path) -> list[Path]:
    """The files an input path stands for, in a fixed order (symlinks that lead nowhere included:
    they are quarantined by name). Raises `InputPathError` when the path itself cannot be read."""
    problem = path_problem(path)
    if problem is not None:
        raise InputPathError(f"{path}: {problem}")
    if path.is_file() or is_hf_dataset_dir(path):
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*")
                      if (p.is_file() or p.is_symlink()) and p.name.endswith(SUPPORTED))
    raise InputPathError(f"{path}: not a file or directory")


def read_rows(path: Path, max_line_bytes: int = 8 << 20, start_offset: int = 0, start_index: int = 0
              ) -> Iterator[RawRow]:
    """Every row of an input path (file, HF dataset directory, or directory of files).

    `start_offset`/`start_index` resume a JSON-lines file where an earlier version stopped."""
    if start_offset:
        yield from read_jsonl(Path(path), max_line_bytes, start_offset, start_index)
        return
    for file in input_files(Path(path)):
        name = source_name(file)
        problem = path_problem(file)
        if problem is not None:
            yield RawRow(name, 0, error="unreadable_file", detail=problem)
        elif is_hf_dataset_dir(file):
            yield from read_hf_dataset(file)
        elif name.endswith(".parquet"):
            yield from read_parquet(file)
        elif name.endswith(JSON_SUFFIXES):
            if is_json_array(file, max_line_bytes):
                yield from read_json_array(file)
            else:
                yield from read_jsonl(file, max_line_bytes)
        else:
            yield RawRow(name, 0, error="unsupported_file", detail=f"unsupported file type: {name}")
