"""`prefpipe review NAME@vN`: serve the review page, or `--report` the audit, or `--export` gold."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.review.audit import audit_version, headline
from pipeline.review.export import export_gold
from pipeline.review.records import ReviewError, check_reviewer, reviews_dir

out = Console(highlight=False, soft_wrap=True)
if not out.is_terminal:  # piped: wide enough that a table row stays one line
    out.width = 160


def default_reviewer() -> str:
    try:
        return check_reviewer(getpass.getuser())
    except (ReviewError, OSError, KeyError):
        return "reviewer"


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _ci(ci) -> str:
    return "-" if not ci or ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def print_report(audit: dict) -> None:
    o = audit["overall"]
    out.print(f"{headline(audit)} (accuracy excluding human ties, weighted to the version's strata, 95% "
              f"bootstrap CI); reviewers: {', '.join(audit['reviewers'])}; {audit['skipped']} skipped")
    table = Table("group", "in version", "labelled", "human ties", "acc. excl. ties", "95% CI", "kappa", "95% CI",
                  title="published direction vs humans")
    rows = [("all", o, audit["version_pairs"])] + [(f"stratum {k}", v, v["population"])
                                                   for k, v in audit["strata"].items()]
    rows += [(f"source {k}", v, None) for k, v in audit["sources"].items()]
    for name, g, population in rows:
        table.add_row(name, "-" if population is None else str(population), str(g["pairs"]), str(g["human_ties"]),
                      _num(g["accuracy_excluding_ties"]), _ci(g["ci95"]["accuracy_excluding_ties"]),
                      _num(g["cohen_kappa"]), _ci(g["ci95"]["cohen_kappa"]))
    out.print(table)
    if audit["inter_reviewer"]:
        inter = Table("reviewers", "common pairs", "agreement", "kappa", "95% CI", title="between reviewers")
        for r in audit["inter_reviewer"]:
            inter.add_row(" / ".join(r["reviewers"]), str(r["pairs"]), _num(r["agreement"]), _num(r["cohen_kappa"]),
                          _ci(r["kappa_ci95"]))
        out.print(inter)


def review(version_dir: Path, root: Path, sample: int, reviewer: str | None, port: int, seed: int,
           report: bool, export: Path | None, as_json: bool) -> None:
    """The command's body (pipeline.cli registers it); raises ReviewError with its exit code."""
    version_dir = Path(version_dir)
    dataset, version = version_dir.parent.name, version_dir.name
    ref = f"{dataset}@{version}"
    if reviewer is not None:
        check_reviewer(reviewer)
    if report or export is not None:
        where = reviews_dir(root, dataset, version)
        nothing = ReviewError(f"no labels for {ref} under {where}: label pairs with `prefpipe review {ref}` first",
                              code=1)
        if export is not None:
            counts = export_gold(version_dir, root, dataset, version, export, reviewer)
            if not counts["pairs"]:
                Path(export).unlink(missing_ok=True)
                raise nothing
            out.print(f"wrote {counts['pairs']} gold pairs ({counts['preferences']} preferences, {counts['ties']} "
                      f"ties) to {export}: prefpipe eval-annotator RECIPE --gold {export}")
        if report:
            audit = audit_version(version_dir, root, dataset, version, reviewer=reviewer)
            if audit is None:
                raise nothing
            out.print_json(json.dumps(audit)) if as_json else print_report(audit)
        return

    from pipeline.review.server import ReviewSession, bind, serve

    sock = bind(port)
    try:
        session = ReviewSession(version_dir, root, reviewer or default_reviewer(), sample, seed)
    except BaseException:
        sock.close()
        raise
    state = session.state()
    if not state["total"]:
        sock.close()
        session.close()
        raise ReviewError(f"{ref} has no pairs to review", code=1)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    out.print(f"reviewing {ref} as {session.reviewer}: {state['total']} pairs sampled (seed {seed}), "
              f"{state['done']} labelled; labels go to {session.log.path}")
    out.print(f"open {url}  (keys: 1, 2, t tie, s skip, u undo; Ctrl-C stops)")
    out.file.flush()
    serve(session, sock)
    state = session.state()
    out.print(f"stopped: {state['done']} of {state['total']} pairs labelled, saved in {session.log.path}")
