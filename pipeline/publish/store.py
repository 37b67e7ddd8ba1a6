"""The versioned dataset store: `ROOT/datasets/NAME/vNNNN/`, immutable once published.

A version is assembled in a private temporary directory beside the versions and made visible with
one atomic rename; the version number is taken and the rename done under one file lock, so
concurrent builds get consecutive versions (no gaps, no collisions) and a killed build leaves no
visible version.
"""

from __future__ import annotations

import datetime as dt
import difflib
import errno
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.ids import file_sha256
from pipeline.names import check_dataset_name, parse_ref
from pipeline.publish.paths import portable
from pipeline.shards import count_rows

ENV_DATA_ROOT = "PREFPIPE_DATA_ROOT"
VERSION_DIR = re.compile(r"^v(\d{4,})$")
TMP_PREFIX = ".tmp-"
LOCK_TIMEOUT_S = 600  # how long a publish waits for another one of the same dataset
# errno of a data root prefpipe cannot write -> what is wrong with it
ACCESS_ERRNOS = {errno.EROFS: "read-only", errno.EACCES: "not writable", errno.EPERM: "not writable",
                 errno.ENOTDIR: "not a directory tree"}


class StoreError(RuntimeError):
    """Publishing or reading a version failed; the message says what and where."""


class AlreadyPublished(Exception):
    """An identical build (same build key) was published while this one ran."""

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = path


def data_root(explicit: str | Path | None = None) -> Path:
    """`--data-root`, else $PREFPIPE_DATA_ROOT, else ./data."""
    return Path(explicit or os.environ.get(ENV_DATA_ROOT) or "data").resolve()


def os_problem(err: OSError, root: Path | None = None) -> tuple[str, str]:
    """(what went wrong, what to do) for an OSError met writing (under data root `root`, if given)."""
    where = err.filename or root  # pyarrow's errors name no file
    if err.errno == errno.ENOSPC:
        return f"disk full writing {where or 'files'}", "free space and rerun"
    if err.errno in ACCESS_ERRNOS and root is not None and (
            err.filename is None or Path(err.filename).is_relative_to(root)):
        return (f"data root {root} is {ACCESS_ERRNOS[err.errno]} ({err.strerror or err}: {where})",
                "make it writable or choose another with --data-root")
    return f"{err.strerror or err}: {where or 'writing files'}", "fix that and rerun"


def dataset_dir(root: Path, name: str) -> Path:
    return Path(root) / "datasets" / check_dataset_name(name)


def version_name(n: int) -> str:
    return f"v{n:04d}"


def list_versions(root: Path, name: str) -> list[int]:
    d = dataset_dir(root, name)
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := VERSION_DIR.match(p.name)))


def list_datasets(root: Path) -> list[str]:
    d = Path(root) / "datasets"
    return sorted(p.name for p in d.iterdir() if p.is_dir() and list_versions(root, p.name)) \
        if d.is_dir() else []


def version_path(root: Path, ref: str) -> Path:
    """`NAME` (latest) or `NAME@vN` -> the version directory; StoreError when absent."""
    name, version = parse_ref(ref)
    versions = list_versions(root, name)
    if not versions:
        known = sorted(p.name for p in (Path(root) / "datasets").glob("*") if p.is_dir() and not p.name.startswith("."))
        close = difflib.get_close_matches(name, known, n=1)
        raise StoreError(f"no published versions of dataset {name!r} under {root}"
                         + (f": did you mean {close[0]!r}?" if close else ""))
    version = versions[-1] if version is None else version
    if version not in versions:
        raise StoreError(f"{name} has no version {version_name(version)} (has "
                         f"{', '.join(version_name(v) for v in versions)})")
    return dataset_dir(root, name) / version_name(version)


def read_manifest(version_dir: Path) -> dict:
    return json.loads((Path(version_dir) / "manifest.json").read_text())


def find_build(root: Path, name: str, build_key: str) -> Path | None:
    """The newest version built from exactly this recipe, inputs and code, if any."""
    for v in reversed(list_versions(root, name)):
        path = dataset_dir(root, name) / version_name(v)
        if read_manifest(path).get("build_key") == build_key:
            return path
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(directory: Path) -> None:
    """Remove temporary directories left by builds whose process is gone."""
    if not directory.is_dir():
        return
    for p in directory.iterdir():
        if p.name.startswith(TMP_PREFIX):
            try:
                pid = int(p.name[len(TMP_PREFIX):].split("-")[0])
            except ValueError:
                continue
            if not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)


def _place(src: Path, dst: Path) -> None:
    """Hard-link when possible (shards and published files never change), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _copy_files(files: list[Path], target: Path, prefix: str) -> dict[str, dict]:
    target.mkdir(parents=True)
    out = {}
    for i, src in enumerate(files):
        dst = target / f"{prefix}-{i:05d}.parquet"
        _place(src, dst)
        out[f"{target.name}/{dst.name}"] = {"sha256": file_sha256(dst), "rows": count_rows([dst])}
    return out


def _freeze(directory: Path) -> None:
    """Make every file read-only and flush it to disk before the version becomes visible."""
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)


def _cannot_publish(name: str, err: OSError, root: Path) -> str:
    problem, todo = os_problem(err, Path(root))
    return f"cannot publish {name}: {problem} (nothing was published; earlier versions are untouched): {todo}"


def publish(root: Path, name: str, data_files: list[Path], dropped_files: list[Path],
            manifest: dict, write_card: Callable[[Path, dict], None] | None = None,
            extra_files: dict[str, Path] | None = None, unless_build_key: str | None = None) -> Path:
    """Assemble a version from shard files and publish it atomically; return its directory.

    `manifest` is completed with version, parent, created_at, files and row counts, and its paths
    made relative (`paths.portable`: no absolute local path in a version);
    `write_card(tmp_version_dir, manifest)` writes the data card before the rename;
    `extra_files` maps a relative path inside the version to a file to copy there.
    With `unless_build_key`, a version already published under that build key (by a concurrent
    identical build) wins: nothing is published and AlreadyPublished names it.
    """
    ds = dataset_dir(root, name)
    try:
        ds.mkdir(parents=True, exist_ok=True)
        clean_stale_tmp(ds)
        tmp = ds / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
    except OSError as err:
        raise StoreError(_cannot_publish(name, err, root)) from err
    try:
        files = _copy_files(data_files, tmp / "data", "part")
        files.update(_copy_files(dropped_files, tmp / "dropped", "dropped"))
        for rel, src in (extra_files or {}).items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            files[rel] = {"sha256": file_sha256(dst)}
        with FileLock(str(ds / ".lock"), timeout=LOCK_TIMEOUT_S):
            if unless_build_key and (same := find_build(root, name, unless_build_key)) is not None:
                raise AlreadyPublished(same)
            existing = list_versions(root, name)
            number = (existing[-1] + 1) if existing else 1
            manifest = {
                **(portable(manifest, root) if "recipe_path" in manifest else manifest),
                "name": name,
                "version": version_name(number),
                "parent_version": version_name(existing[-1]) if existing else None,
                "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "rows": sum(f["rows"] for k, f in files.items() if k.startswith("data/")),
                "rows_dropped": sum(f["rows"] for k, f in files.items() if k.startswith("dropped/")),
                "files": files,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            if write_card is not None:
                write_card(tmp, manifest)
            _freeze(tmp)
            final = ds / version_name(number)
            os.rename(tmp, final)
        return final
    except Timeout:  # before OSError: it is one (TimeoutError)
        raise StoreError(f"cannot publish {name}: another build has been publishing it for {LOCK_TIMEOUT_S} s "
                         f"({ds / '.lock'} is held; nothing was published): rerun when it is done") from None
    except OSError as err:
        raise StoreError(_cannot_publish(name, err, root)) from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
