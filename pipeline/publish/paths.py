"""No absolute local path in a version. At publish time `portable` rewrites the manifest: the recipe
and its inputs relative to the recipe's directory (the README's rule for recipes), the rebuild
command relative to the data root (or as typed, relative to where the build ran), any other path
relative to the data root. Manifests of older versions (absolute paths) are read as they are."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

DATA_ROOT, RECIPE_DIR, BUILD_DIR = "data root", "recipe's directory", "build directory"


def data_root_of(version_dir: Path) -> Path:
    """DATA_ROOT of DATA_ROOT/datasets/NAME/vNNNN (or of the temporary directory beside it)."""
    return Path(version_dir).resolve().parents[2]


def _relative(path: str, base: Path) -> str:
    return os.path.relpath(path, base) if os.path.isabs(path) else path


def _walk(x, base: Path):
    """Every absolute path string in `x` made relative to `base`."""
    if isinstance(x, dict):
        return {k: _walk(v, base) for k, v in x.items()}
    if isinstance(x, list):
        return [_walk(v, base) for v in x]
    if isinstance(x, str) and x.startswith("/") and not any(c.isspace() for c in x):
        return _relative(x, base)
    return x


def rebuild_command(command: str, recipe_path: str, root: Path) -> tuple[str, str]:
    """(where to run it, the build command), with no absolute path. A recipe given by its absolute
    path: from the data root, every path relative to it. A recipe path typed relative to the
    directory the build ran in: from there, as typed, an absolute data root named DATA_ROOT."""
    anchored = os.path.isabs(recipe_path)
    out: list[str] = []
    for token in shlex.split(command):
        flag, eq, value = token.partition("=")
        if (out and out[-1] == "--data-root") or (eq and flag == "--data-root"):
            path = value if eq else token
            path = "." if anchored else ("DATA_ROOT" if os.path.isabs(path) else path)
            token = f"{flag}={path}" if eq else path
        elif eq and flag.startswith("--"):
            token = f"{flag}={_relative(value, root)}"
        else:
            token = _relative(token, root)
        out.append(token)
    if anchored and not any(t == "--data-root" or t.startswith("--data-root=") for t in out):
        out += ["--data-root", "."]
    where = ("from the data root (the directory that holds datasets/)" if anchored else
             "from the directory the build ran in (the recipe path is relative to it; DATA_ROOT, where given, "
             "is the directory that holds datasets/)")
    return where, shlex.join(out)


def portable(manifest: dict, root: Path) -> dict:
    """`manifest` (as a build records it, paths absolute) with every path relative; `paths` says to what."""
    if "paths" in manifest:
        return manifest
    root = Path(root).resolve()
    recipe_path = manifest["recipe_path"]
    recipe_dir = Path(recipe_path).resolve().parent
    where, command = rebuild_command(manifest.get("command") or f"prefpipe build {recipe_path}", recipe_path, root)
    out = _walk({k: v for k, v in manifest.items() if k not in ("recipe", "inputs", "recipe_path", "command")}, root)
    return {
        "recipe": _walk(manifest["recipe"], recipe_dir),
        "recipe_path": _relative(recipe_path, root),
        "inputs": [{**i, "path": _relative(i["path"], recipe_dir)} for i in manifest.get("inputs", [])],
        "command": command,
        "rebuild_from": where,
        "paths": {"recipe": RECIPE_DIR, "inputs": RECIPE_DIR,
                  "recipe_path": DATA_ROOT if os.path.isabs(recipe_path) else BUILD_DIR,
                  "command": DATA_ROOT if os.path.isabs(recipe_path) else BUILD_DIR, "other": DATA_ROOT},
        **out,
    }


def recipe_anchored(manifest: dict) -> bool:
    """Whether the recipe's own paths are relative to its directory (else, in versions published
    before `portable`, to the data root)."""
    if "paths" in manifest:
        return True
    return os.path.isabs(manifest.get("recipe_path") or "")


def rebuild(manifest: dict, version_dir: Path) -> tuple[str, str]:
    """(where to run it, the build command) of a version."""
    if "rebuild_from" in manifest:
        return manifest["rebuild_from"], manifest["command"]
    recipe_path = manifest.get("recipe_path", "RECIPE")
    return rebuild_command(manifest.get("command") or f"prefpipe build {recipe_path}", recipe_path,
                           data_root_of(version_dir))


def relative_recipe(manifest: dict, version_dir: Path) -> dict:
    """The resolved recipe with its paths relative to the recipe's directory (to the data root
    for older versions whose recipe path was not recorded as absolute)."""
    if "paths" in manifest:
        return manifest["recipe"]
    base = Path(manifest["recipe_path"]).parent if recipe_anchored(manifest) else data_root_of(version_dir)
    return _walk(manifest["recipe"], base)


def absolute(path: str, base: Path) -> str:
    """A manifest path (relative to `base`, or absolute in older versions) as an absolute path."""
    return path if os.path.isabs(path) else str((Path(base) / path).resolve())
