"""`prefpipe`: build datasets, ingest files, inspect published versions.

Exit codes: 0 ok, 2 usage or recipe error, 1 run failure. A failure ends with one line on stderr
saying what failed and what to do (`explain`); `--debug` shows the full traceback and Prefect's
own log output instead (otherwise written to PREFECT_HOME/prefpipe.log).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import Abort, Exit

try:  # typer 0.29 carries its own click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - typer on the public click
    from click.exceptions import UsageError
from filelock import Timeout
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.server import ServerError
from flows.settings import log_file, log_to_file
from pipeline.names import NameError_
from pipeline.recipe import IngestConfig, InputSpec, RecipeError, load_recipe
from pipeline.publish.store import (ACCESS_ERRNOS, StoreError, data_root, list_datasets, list_versions, os_problem,
                            read_manifest, version_path)

DEBUG = False  # --debug: tracebacks and Prefect's log output on the terminal


class App(typer.Typer):
    """A Typer app whose uncaught errors end as one line on stderr (the traceback with --debug)."""

    def __call__(self, *args, **kwargs):
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except Exit as done:  # --help and friends
            sys.exit(done.exit_code)
        except UsageError as err:  # a bad flag or value: one line, then where the help is
            command = err.ctx.command_path if err.ctx else "prefpipe"
            if not err.format_message():  # no arguments at all: the help was shown
                sys.exit(2)
            fail(f"{err.format_message()} (see {command} --help)", 2)
        except Abort:
            fail("aborted", 1)
        except Exception as err:  # noqa: BLE001 - every failure: one line saying what to do
            if DEBUG:
                raise
            fail(*explain(err))
        sys.exit(code if isinstance(code, int) else 0)


app = App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
          help="Curate preference datasets for DPO and reward-model training.")
datasets_app = typer.Typer(no_args_is_help=True, help="Inspect published datasets.")
app.add_typer(datasets_app, name="datasets")
console = Console(stderr=True)
out = Console()

DataRoot = typer.Option(None, "--data-root", help="Output root (default: $PREFPIPE_DATA_ROOT or ./data)")


@app.callback()
def options(debug: bool = typer.Option(False, "--debug", envvar="PREFPIPE_DEBUG",
                                       help="On failure show the full traceback, and Prefect's log output")):
    global DEBUG
    DEBUG = debug
    if not debug:
        log_to_file()
        logging.raiseExceptions = False  # a log file on a full disk must not print tracebacks


def fail(message: str, code: int) -> None:
    """Print `error: MESSAGE` as one line on stderr and exit with `code`."""
    console.print(f"[red]error:[/red] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)
    sys.exit(code)


def explain(err: Exception, root: Path | None = None) -> tuple[str, int]:
    """(one line saying what failed and what to do, exit code) for an error a command met;
    `root`: the data root the command writes under."""
    from pipeline.engines.http_engine import EngineUnavailable

    if isinstance(err, (RecipeError, NameError_)):
        return str(err), 2
    from pipeline.annotate.gate import GateFailed

    if isinstance(err, (StoreError, ServerError, GateFailed)):
        return str(err), 1
    if isinstance(err, EngineUnavailable):
        return (f"build failed: {err}: start the engine (or fix its URL in the recipe) and rerun; "
                f"finished work is kept"), 1
    if isinstance(err, Timeout):  # before OSError: it is one
        return f"{err.lock_file} is locked by another prefpipe process: wait for it to finish and rerun", 1
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, *ACCESS_ERRNOS):
        return ": ".join(os_problem(err, root)), 1
    if (path := _input_being_read(err)) is not None:
        return (f"cannot read input {path}: {type(err).__name__}: {str(err).rstrip('.')}: fix or replace it, "
                f"or drop it from the recipe"), 1
    return (f"{type(err).__name__}: {str(err).rstrip('.')} (rerun with --debug for the traceback; "
            f"Prefect's log: {log_file()})"), 1


def _input_being_read(err: BaseException) -> str | None:
    """The recipe input `ingest_input(spec, ...)` was reading when `err` was raised, if any."""
    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "ingest_input":
            return getattr(tb.tb_frame.f_locals.get("spec"), "path", None)
        tb = tb.tb_next
    return None


def funnel_table(funnel: list[dict]) -> Table:
    table = Table("stage", "rows in", "rows out", "dropped", "output rows", "drop reasons")
    for s in funnel:
        reasons = ", ".join(f"{k}: {v}" for k, v in s["reasons"].items()) or "-"
        table.add_row(s["stage"], str(s["rows_in"]), str(s["rows_out"]), str(s["rows_dropped"]),
                      str(s["outputs_written"]), reasons)
    return table


class StageProgress:
    """Rich progress bars fed by `pipeline.progress`: rows read per stage, with the total and the
    time left once the flow knows how many rows the stage reads."""

    def __enter__(self):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        from pipeline import progress

        self.bars = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("rows"), TimeElapsedColumn(),
                             TextColumn("eta"), TimeRemainingColumn(),
                             console=console, transient=True, disable=not console.is_terminal)
        self.tasks: dict[str, int] = {}
        self.bars.__enter__()
        self.unsubscribe = progress.subscribe(self)
        return self

    def _task(self, label: str) -> int:
        if label not in self.tasks:
            self.tasks[label] = self.bars.add_task(label, total=None)
        return self.tasks[label]

    def advance(self, label: str, rows: float) -> None:
        self.bars.advance(self._task(label), rows)

    def expect(self, label: str, total: int | None) -> None:
        self.bars.update(self._task(label), total=total)

    def finish(self, label: str, rows: int) -> None:
        self.bars.update(self._task(label), total=rows, completed=rows)

    def __exit__(self, *exc):
        self.unsubscribe()
        self.bars.__exit__(*exc)


@app.command()
def build(recipe: Path = typer.Argument(..., help="Recipe YAML"), data_root_: Optional[Path] = DataRoot,
          force: bool = typer.Option(False, "--force", help="Publish a new version even if an identical build exists"),
          incremental: bool = typer.Option(False, "--incremental",
                                           help="Read only inputs/rows earlier versions have not seen"),
          dask_address: Optional[str] = typer.Option(
              None, "--dask-address", envvar="PREFPIPE_DASK_ADDRESS",
              help="Run shard tasks on an existing Dask cluster (tcp://host:8786)"),
          fail_on_empty: bool = typer.Option(False, "--fail-on-empty",
                                             help="Exit 1 when a stage dropped every row it read")):
    """Run the build flow for RECIPE and publish a new dataset version."""
    name = load_recipe(recipe).output.dataset  # fail before any work (and before Prefect starts)
    out.print(f"building {name} from {recipe}: connecting to Prefect ...", highlight=False, soft_wrap=True)
    from flows.build import build_flow, run_tags  # it points Prefect at the shared server

    flow_fn = build_flow(dask_address)
    command = "prefpipe build " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    root = data_root(data_root_)
    try:
        with StageProgress(), run_tags(name, incremental):
            state = flow_fn(str(recipe), str(root), force, incremental, command, return_state=True)
        if api := os.environ.get("PREFECT_API_URL"):
            out.print(f"run: {api.rstrip('/').removesuffix('/api')}/runs/flow-run/"
                      f"{state.state_details.flow_run_id}", highlight=False, soft_wrap=True)
        result = state.result()
    except Exception as err:  # noqa: BLE001 - explained with the data root it wrote under
        if DEBUG:
            raise
        fail(*explain(err, root))
    version_dir = Path(result["version_dir"])
    manifest = read_manifest(version_dir)
    if result["published"]:
        out.print(funnel_table(manifest["funnel"]))
        out.print(f"published {manifest['name']}@{manifest['version']}: {manifest['rows']} rows")
        if (ev := manifest.get("annotator_eval")) and ev.get("gate"):
            from pipeline.annotate.gate import sentence

            forced = " (forced with --force: the card says so)" if ev["gate"].get("forced") else ""
            (console if forced else out).print(sentence(ev) + forced, highlight=False, soft_wrap=True, markup=False)
        if (fit := manifest.get("annotator_fit")):
            from pipeline.annotate.ensemble_fit import sentence as fit_sentence

            out.print(fit_sentence(fit), highlight=False, soft_wrap=True, markup=False)
        emptied = [s for s in manifest["funnel"] if s["rows_in"] and not s["rows_out"]]
        for s in emptied:
            console.print(f"warning: stage {s['stage']} dropped every row it read ({s['rows_in']}: "
                          + ", ".join(f"{r} {n}" for r, n in s["reasons"].items()) + "); see dropped/",
                          highlight=False, soft_wrap=True, markup=False)
        if emptied and fail_on_empty:
            fail(f"stage {emptied[0]['stage']} dropped every row (--fail-on-empty)", 1)
    elif incremental:
        out.print(f"nothing new: {manifest['name']}@{manifest['version']} is current ({manifest['rows']} rows)")
    else:
        out.print(f"unchanged: an identical build is already published as "
                  f"{manifest['name']}@{manifest['version']}: {manifest['rows']} rows")
    out.print(str(version_dir), soft_wrap=True, highlight=False)


@app.command()
def deploy(recipe: Path = typer.Argument(..., help="Recipe YAML"),
           cron: Optional[str] = typer.Option(None, "--cron", help='Cron schedule, e.g. "0 3 * * *"'),
           interval: Optional[float] = typer.Option(None, "--interval", help="Seconds between runs"),
           name: Optional[str] = typer.Option(None, "--name", help="Deployment name (default: dataset name)"),
           data_root_: Optional[Path] = DataRoot):
    """Serve RECIPE as a scheduled Prefect deployment (incremental runs) until interrupted.

    Needs a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api).
    """
    import os

    if (cron is None) == (interval is None):
        fail("give exactly one of --cron or --interval", 2)
    if not os.environ.get("PREFECT_API_URL"):
        fail("PREFECT_API_URL is not set: start a server (`prefect server start`) and point "
             "PREFECT_API_URL at it, e.g. http://127.0.0.1:4200/api", 2)
    try:
        load_recipe(recipe)
    except RecipeError as err:
        fail(str(err), 2)
    from flows.deploy import serve_recipe

    console.print(f"serving {recipe} ({'cron ' + cron if cron else f'every {interval:g} s'}); Ctrl-C stops")
    serve_recipe(str(recipe), cron, interval, name, str(data_root(data_root_)))


deployments_app = typer.Typer(no_args_is_help=True, help="Scheduled deployments on the Prefect server.")
app.add_typer(deployments_app, name="deployments")


@deployments_app.command("ls")
def deployments_ls():
    """Deployments with their schedules and whether they are paused."""
    from flows.deploy import list_deployments

    table = Table("deployment", "paused", "schedules", "recipe")
    for d in list_deployments():
        table.add_row(d["name"], str(d["paused"]), ", ".join(d["schedules"]) or "-", d["recipe"] or "-")
    out.print(table)


@deployments_app.command("pause")
def deployments_pause(name: str = typer.Argument(..., help="Deployment name")):
    """Pause a deployment's schedule."""
    from flows.deploy import set_paused

    set_paused(name, True)
    out.print(f"paused {name}")


@deployments_app.command("resume")
def deployments_resume(name: str = typer.Argument(..., help="Deployment name")):
    """Resume a paused deployment's schedule."""
    from flows.deploy import set_paused

    set_paused(name, False)
    out.print(f"resumed {name}")


@app.command()
def ingest(path: Path = typer.Argument(..., help="Input file or directory"),
           out_dir: Path = typer.Option(..., "--out", help="Directory for the shards"),
           fmt: str = typer.Option("auto", "--format", help="Force an input format"),
           shard_rows: int = typer.Option(1000, "--shard-rows"),
           max_text_chars: int = typer.Option(100_000, "--max-text-chars")):
    """Ingest one input into conversation shards and a quarantine, without publishing."""
    from pydantic import ValidationError

    from pipeline.ingest import ingest_input
    from pipeline.ingest.readers import InputPathError
    from pipeline.stages.ingest import IngestStage

    try:
        spec = InputSpec(path=str(path), format=fmt)
        config = IngestConfig(shard_rows=shard_rows, max_text_chars=max_text_chars)
    except ValidationError as err:
        flags = {"format": "--format", "shard_rows": "--shard-rows", "max_text_chars": "--max-text-chars"}
        e = err.errors()[0]
        fail(f"{flags.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']} (see prefpipe ingest --help)", 2)
    if out_dir.exists() and any(out_dir.iterdir()):
        fail(f"{out_dir} is not empty", 2)
    try:
        stats = ingest_input(spec, config, out_dir, stage=IngestStage.name)
    except InputPathError as err:
        fail(str(err), 2)
    out.print(funnel_table([stats.to_dict()]))
    if stats.rows_in and not stats.rows_out:
        console.print(f"warning: all {stats.rows_in} rows were quarantined (" + ", ".join(
            f"{r} {n}" for r, n in stats.reasons.items()) + f"): is --format {fmt} right?",
            highlight=False, soft_wrap=True, markup=False)
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
    path = _resolve_version(ref, data_root_)
    manifest = read_manifest(path)
    if as_json:
        out.print_json(json.dumps(manifest))
        return
    out.print(f"{manifest['name']}@{manifest['version']}  rows={manifest['rows']}  "
              f"dropped={manifest['rows_dropped']}  parent={manifest['parent_version']}  "
              f"created={manifest['created_at']}")
    out.print(funnel_table(manifest["funnel"]))
    out.print(str(path), soft_wrap=True, highlight=False)


def _resolve_version(ref: str, data_root_: Optional[Path]) -> Path:
    try:
        return version_path(data_root(data_root_), ref)
    except NameError_ as err:
        fail(str(err), 2)
    except StoreError as err:
        fail(str(err), 1)


@app.command()
def card(ref: str = typer.Argument(..., help="NAME@vN (or NAME for the latest)"),
         data_root_: Optional[Path] = DataRoot):
    """Regenerate README.md and report.html of a published version (its data never changes)."""
    from pipeline.publish.card import regenerate

    path = _resolve_version(ref, data_root_)
    try:
        changed = regenerate(path)
    except OSError as err:
        fail(f"cannot write the card of {path}: {err.strerror or err}", 1)
    for name, was_changed in changed.items():
        out.print(f"{'rewrote' if was_changed else 'unchanged'} {path / name}", soft_wrap=True, highlight=False)


# --- review: a page for people to label sampled pairs (the body lives in pipeline/review/) ---
@app.command()
def review(ref: str = typer.Argument(..., help="NAME@vN (or NAME for the latest)"),
           sample: int = typer.Option(100, "--sample", min=1, help="Pairs in the sample"),
           reviewer: Optional[str] = typer.Option(None, "--reviewer", help="Who labels (default: your user name)"),
           port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0: any free one)"),
           seed: int = typer.Option(0, "--seed", help="Seed of the sample and of the left/right order"),
           report: bool = typer.Option(False, "--report", help="Print the humans' agreement with the pairs"),
           export: Optional[Path] = typer.Option(None, "--export", help="Write the labels as a gold JSONL "
                                                 "for eval-annotator --gold"),
           as_json: bool = typer.Option(False, "--json", help="--report as JSON"),
           data_root_: Optional[Path] = DataRoot):
    """Label a stratified sample of a version's pairs in a local web page; --report, --export."""
    from pipeline.review.command import review as run_review
    from pipeline.review.records import ReviewError

    try:
        run_review(_resolve_version(ref, data_root_), data_root(data_root_), sample, reviewer, port, seed,
                   report, export, as_json)
    except ReviewError as err:
        fail(str(err), err.code)


@datasets_app.command("diff")
def datasets_diff(ref_a: str = typer.Argument(..., help="NAME@vA (older)"),
                  ref_b: str = typer.Argument(..., help="NAME@vB (newer)"),
                  data_root_: Optional[Path] = DataRoot,
                  as_json: bool = typer.Option(False, "--json", help="Print the diff as JSON")):
    """Pairs added/removed (by pair id), funnel and distribution changes between two versions."""
    from pipeline.publish.diff import diff_versions, distribution_rows, funnel_rows

    diff = diff_versions(_resolve_version(ref_a, data_root_), _resolve_version(ref_b, data_root_))
    if as_json:
        out.print_json(json.dumps(diff))
        return
    out.print(f"{diff['a']} -> {diff['b']}: {diff['rows']['a']} -> {diff['rows']['b']} rows; "
              f"added {diff['added']}, removed {diff['removed']}, unchanged {diff['unchanged']}", highlight=False)
    funnel = Table("stage", "count", diff["a"], diff["b"], "change", title="funnel")
    for row in funnel_rows(diff):
        funnel.add_row(*row)
    out.print(funnel)
    dist = Table("column", f"n {diff['a']}", f"n {diff['b']}", "mean A", "mean B", "median A", "median B",
                 title="distributions")
    for row in distribution_rows(diff):
        dist.add_row(*row)
    out.print(dist)


@app.command("eval-annotator")
def eval_annotator(recipe: Path = typer.Argument(..., help="Recipe YAML with an annotate section"),
                   gold: Path = typer.Option(..., "--gold", exists=True, help="Gold pairs (Auto-J, "
                                             "AlpacaEval annotations, hh-rlhf, prompt/chosen/rejected)"),
                   fmt: str = typer.Option("auto", "--format", help="Force the gold file's format"),
                   limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Fixed random sample of N pairs"),
                   seed: int = typer.Option(0, "--seed", help="Seed of the sample and of the A/B order"),
                   resamples: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples"),
                   out_dir: Path = typer.Option(Path("eval-annotator"), "--out", help="Report directory")):
    """Measure RECIPE's annotator against gold preferences; write JSON + Markdown reports."""
    from pipeline.annotate.baselines import recipe_length_guard
    from pipeline.annotate.eval import annotator_engines, evaluate_annotator, write_report
    from pipeline.annotate.gold import load_gold
    from pipeline.recipe import load_annotate_config

    try:
        config = load_annotate_config(recipe)
        guard = recipe_length_guard(recipe)
    except RecipeError as err:
        fail(str(err), 2)
    pairs, rejected = load_gold(gold, fmt, limit, seed)
    if not pairs:
        fail(f"{gold}: no usable gold pairs ({len(rejected)} rows rejected)", 2)
    engines = annotator_engines(config)
    try:
        weights = fit = None
        if config.method == "ensemble":  # fitted on the recipe's gold (kept under --out), applied to --gold
            from pipeline.annotate import ensemble_fit

            fit = ensemble_fit.measure(config, out_dir, engines)
            weights = ensemble_fit.scoring_weights(fit)
            out.print(ensemble_fit.sentence(fit))
        report = evaluate_annotator(config, engines, pairs, resamples, cache_dir=out_dir / "cache",
                                    length_guard=guard, weights=weights)
        if fit is not None:
            report["ensemble_fit"] = {k: fit[k] for k in ("weights", "verdict", "gold")}
    finally:
        for engine in {id(e): e for e in engines.values()}.values():
            engine.close()
    reasons: dict[str, int] = {}
    for _, reason in rejected:
        reasons[reason] = reasons.get(reason, 0) + 1
    report["gold"] = {"path": str(gold), "format": fmt, "pairs": len(pairs), "limit": limit, "seed": seed,
                      "rejected": reasons}
    js, md = write_report(report, out_dir)
    table = Table("variant", "acc. excl. ties", "acc. incl. ties", "kappa", "flip rate", "failed", "seconds")
    for name, m in report["variants"].items():
        f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(name, f(m["accuracy_excluding_ties"]), f(m["accuracy_including_ties"]),
                      f(m["cohen_kappa"]), f(m.get("flip_rate")), str(m["failed"]), str(m["seconds"]))
    out.print(table)
    out.print(report["verdict"]["sentence"], soft_wrap=True, highlight=False, markup=False)
    out.print(str(js), soft_wrap=True, highlight=False)
    out.print(str(md), soft_wrap=True, highlight=False)


models_app = typer.Typer(no_args_is_help=True, help="The model registry (data/models.yaml, $PREFPIPE_MODELS).")
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list():
    """Registered models, where they come from and whether they are converted."""
    from pipeline.engines.packaged import MARKER, converted_dir, load_registry

    table = Table("model", "source", "converted", "description")
    for name, spec in sorted(load_registry().items()):
        converted = spec.source.startswith("gguf") and (converted_dir(name, spec) / MARKER).is_file()
        table.add_row(name, spec.source, "yes" if converted else "-", spec.description or "")
    out.print(table)


@models_app.command("prepare")
def models_prepare(name: str = typer.Argument(..., help="Registry name of a packaged model")):
    """Assemble, verify and convert a packaged model now (otherwise done on first use)."""
    from pipeline.engines.packaged import ModelNotFound, ensure_model

    try:
        path = ensure_model(name)
    except ModelNotFound as err:
        fail(str(err), 2)
    out.print(str(path), soft_wrap=True, highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
