"""The data card: a Hugging Face dataset card (`README.md` with YAML front matter) per version."""

from __future__ import annotations

from pathlib import Path

import yaml


def size_category(n: int) -> str:
    for limit, label in [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")]:
        if n < limit:
            return label
    return "n>10M"


def front_matter(manifest: dict) -> dict:
    licences = sorted({i["license"] for i in manifest.get("inputs", []) if i.get("license")})
    out_licence = manifest["recipe"]["output"].get("license")
    return {
        "license": out_licence or (licences[0].lower() if len(licences) == 1 else "other"),
        "task_categories": ["text-generation"],
        "tags": ["dpo", "preference", "prefpipe"],
        "size_categories": [size_category(manifest["rows"])],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
    }


def funnel_table(funnel: list[dict]) -> str:
    lines = ["| stage | rows in | rows out | dropped | output rows | drop reasons |",
             "|---|---:|---:|---:|---:|---|"]
    for s in funnel:
        reasons = ", ".join(f"{k}: {v}" for k, v in s["reasons"].items()) or "-"
        lines.append(f"| {s['stage']} | {s['rows_in']} | {s['rows_out']} | {s['rows_dropped']} "
                     f"| {s['outputs_written']} | {reasons} |")
    return "\n".join(lines)


def render_card(manifest: dict) -> str:
    name, version = manifest["name"], manifest["version"]
    inputs = "\n".join(f"- `{Path(i['path']).name}` ({i['format']}, licence: {i.get('license') or 'unknown'}, "
                       f"sha256 `{i['sha256'][:16]}…`)" for i in manifest["inputs"])
    recipe_yaml = yaml.safe_dump(manifest["recipe"], sort_keys=False).strip()
    body = f"""# {name} {version}

{manifest['recipe'].get('description') or 'A preference dataset built by prefpipe.'}

{manifest['rows']} pairs in TRL's conversational preference format (`prompt`, `chosen`, `rejected`
as lists of `{{role, content}}` messages) with `score_chosen`, `score_rejected`, `margin` and
provenance columns. {manifest['rows_dropped']} rows were dropped on the way; each is in `dropped/`
with its stage and reason.

## Load it

```python
import datasets, polars as pl
ds = datasets.load_dataset("parquet", data_dir="data", split="train")   # from this directory
df = pl.read_parquet("data/*.parquet")
```

## Funnel

{funnel_table(manifest['funnel'])}

## Inputs

{inputs}

## How it was made

Parent version: {manifest.get('parent_version') or 'none'}. Code version `{manifest['code_version']}`,
schema version {manifest['schema_version']}. Rebuild with:

```
{manifest['command']}
```

Recipe (hash `{manifest['recipe_hash']}`):

```yaml
{recipe_yaml}
```
"""
    return "---\n" + yaml.safe_dump(front_matter(manifest), sort_keys=False) + "---\n\n" + body


def write_card(version_dir: Path, manifest: dict) -> None:
    (Path(version_dir) / "README.md").write_text(render_card(manifest), encoding="utf-8")
