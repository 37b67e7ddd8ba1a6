"""Scheduled builds: a Prefect deployment of `build_dataset`, served by a long-running process.

`serve_recipe` blocks: it registers the deployment with the Prefect server named by
PREFECT_API_URL and runs every scheduled flow run (each one incremental). The deployment helpers
list, pause and resume deployments through the Prefect API.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from flows.settings import configure

configure()

from prefect.client.orchestration import get_client  # noqa: E402

from flows.build import build_dataset  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402
from pipeline.publish.store import data_root as resolve_root  # noqa: E402

FLOW_NAME = "build-dataset"


def serve_recipe(recipe_path: str, cron: str | None, interval: float | None, name: str | None = None,
                 data_root: str | None = None) -> None:
    """Create (or update) the deployment and serve its scheduled runs until interrupted."""
    recipe = load_recipe(recipe_path)
    path = str(Path(recipe_path).resolve())
    build_dataset.serve(
        name=name or recipe.output.dataset,
        cron=cron,
        interval=dt.timedelta(seconds=interval) if interval else None,
        parameters={"recipe_path": path, "data_root": str(resolve_root(data_root)),
                    "incremental_run": True, "command": f"prefpipe build --incremental {path}"},
        tags=["prefpipe", recipe.output.dataset],
        description=f"prefpipe: incremental builds of {recipe.output.dataset} from {path}",
        print_starting_message=False,
        limit=1,  # one build at a time: a run that overlaps the next tick would race it
    )


def list_deployments() -> list[dict]:
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
        rows = []
        for d in deployments:
            schedules = [s.schedule for s in (d.schedules or [])]
            rows.append({
                "name": f"{flows.get(d.flow_id, '?')}/{d.name}",
                "id": str(d.id),
                "paused": bool(d.paused),
                "schedules": [getattr(s, "cron", None) or str(getattr(s, "interval", s)) for s in schedules],
                "recipe": (d.parameters or {}).get("recipe_path"),
            })
        return rows


def _deployment_id(client, name: str):
    full = name if "/" in name else f"{FLOW_NAME}/{name}"
    return client.read_deployment_by_name(full).id


def set_paused(name: str, paused: bool) -> None:
    with get_client(sync_client=True) as client:
        deployment_id = _deployment_id(client, name)
        if paused:
            client.pause_deployment(deployment_id)
        else:
            client.resume_deployment(deployment_id)
