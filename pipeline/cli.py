"""`prefpipe`: build datasets, ingest files, inspect published versions.

Exit codes: 0 ok, 2 usage or recipe error, 1 run failure.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pipeline.names import NameError_
from pipeline.recipe import IngestConfig, InputSpec, RecipeError, load_recipe
from pipeline.store import StoreError, data_root, list_datasets, list_versions, read_manifest, version_path

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Curate preference datasets for DPO and reward-model training.")
datasets_app = typer.Typer(no_args_is_help=True, help="Inspect published datasets.")
app.add_typer(datasets_app, name="datasets")
console = Console(stderr=True)
out = Console()

DataRoot = typer.Option(None, "--data-root", help="Output root (default: $PREFPIPE_DATA_ROOT or ./data)")


def fail(message: str, code: int) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


def funnel_table(funnel: list[dict]) -> Table:
    table = Table("stage", "rows in", "rows out", "dropped", "output rows", "drop reasons")
    for s in funnel:
        reasons = ", ".join(f"{k}: {v}" for k, v in s["reasons"].items()) or "-"
        table.add_row(s["stage"], str(s["rows_in"]), str(s["rows_out"]), str(s["rows_dropped"]),
                      str(s["outputs_written"]), reasons)
    return table


class StageProgress:
    """Rich progress bars fed by `pipeline.progress` reports (rows processed per stage)."""

    def __enter__(self):
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from pipeline import progress

        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                             TextColumn("{task.completed:,.0f} rows"), TimeElapsedColumn(),
                             console=console, transient=True)
        self.tasks: dict[str, int] = {}
        self.bars.__enter__()
        self.unsubscribe = progress.subscribe(self.update)
        return self

    def update(self, stage: str, rows: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bars.add_task(stage, total=None)
        self.bars.advance(self.tasks[stage], rows)

    def __exit__(self, *exc):
        self.unsubscribe()
        self.bars.__exit__(*exc)


@app.command()
def build(recipe: Path = typer.Argument(..., help="Recipe YAML"), data_root_: Optional[Path] = DataRoot,
          force: bool = typer.Option(False, "--force", help="Publish a new version even if an identical build exists")):
    """Run the build flow for RECIPE and publish a new dataset version."""
    try:
        load_recipe(recipe)  # fail before any work (and before Prefect starts)
    except RecipeError as err:
        fail(str(err), 2)
    from flows.build import build_dataset

    command = "prefpipe build " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    try:
        with StageProgress():
            result = build_dataset(str(recipe), str(data_root(data_root_)), force, command)
    except (RecipeError, NameError_) as err:
        fail(str(err), 2)
    except StoreError as err:
        fail(str(err), 1)
    version_dir = Path(result["version_dir"])
    manifest = read_manifest(version_dir)
    out.print(funnel_table(manifest["funnel"]))
    verb = "published" if result["published"] else "unchanged: an identical build is already published as"
    out.print(f"{verb} {manifest['name']}@{manifest['version']}: {manifest['rows']} rows")
    out.print(str(version_dir), soft_wrap=True, highlight=False)


@app.command()
def ingest(path: Path = typer.Argument(..., exists=True, help="Input file or directory"),
           out_dir: Path = typer.Option(..., "--out", help="Directory for the shards"),
           fmt: str = typer.Option("auto", "--format", help="Force an input format"),
           shard_rows: int = typer.Option(1000, "--shard-rows"),
           max_text_chars: int = typer.Option(100_000, "--max-text-chars")):
    """Ingest one input into conversation shards and a quarantine, without publishing."""
    from pydantic import ValidationError

    from pipeline.ingest import ingest_input

    try:
        spec = InputSpec(path=str(path), format=fmt)
        config = IngestConfig(shard_rows=shard_rows, max_text_chars=max_text_chars)
    except ValidationError as err:
        fail(str(err), 2)
    if out_dir.exists() and any(out_dir.iterdir()):
        fail(f"{out_dir} is not empty", 2)
    stats = ingest_input(spec, config, out_dir)
    out.print(funnel_table([stats.to_dict()]))
    out.print(str(out_dir), soft_wrap=True, highlight=False)


@datasets_app.command("list")
def datasets_list(data_root_: Optional[Path] = DataRoot):
    """Published datasets and their versions."""
    root = data_root(data_root_)
    table = Table("dataset", "versions", "latest", "rows")
    for name in list_datasets(root):
        versions = list_versions(root, name)
        manifest = read_manifest(version_path(root, name))
        table.add_row(name, str(len(versions)), manifest["version"], str(manifest["rows"]))
    out.print(table)


@datasets_app.command("show")
def datasets_show(ref: str = typer.Argument(..., help="NAME or NAME@vN"), data_root_: Optional[Path] = DataRoot,
                  as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON")):
    """One version: its manifest summary and funnel."""
    try:
        path = version_path(data_root(data_root_), ref)
    except NameError_ as err:
        fail(str(err), 2)
    except StoreError as err:
        fail(str(err), 1)
    manifest = read_manifest(path)
    if as_json:
        out.print_json(json.dumps(manifest))
        return
    out.print(f"{manifest['name']}@{manifest['version']}  rows={manifest['rows']}  "
              f"dropped={manifest['rows_dropped']}  parent={manifest['parent_version']}  "
              f"created={manifest['created_at']}")
    out.print(funnel_table(manifest["funnel"]))
    out.print(str(path), soft_wrap=True, highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
