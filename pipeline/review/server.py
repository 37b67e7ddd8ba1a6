"""The review server: a FastAPI app on 127.0.0.1 that shows one sampled pair at a time and
appends each label to the reviewer's label file before it answers.

A label names the pair it is for; the server takes it only for the pair it is showing (the first
of the sample this reviewer has not labelled), so a double key press or a stale page never labels
twice. Undo names the label it withdraws (the reviewer's last one in this sample). Requests must
come from the page itself: the Host must be 127.0.0.1 or localhost, a POST with an Origin must
have that origin, and bodies are JSON; the Content-Security-Policy allows only the page's own
script and style.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import jinja2
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.middleware.trustedhost import TrustedHostMiddleware

from pipeline.publish.store import read_manifest
from pipeline.review import page
from pipeline.review.audit import audit_version, headline
from pipeline.review.records import Label, LabelLog, ReviewError, Undo
from pipeline.review.sample import Sampled, draw, load_pairs, stratify

HOSTS = ("127.0.0.1", "localhost")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'none'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _text(messages: list[dict] | None) -> str:
    return "".join(m.get("content") or "" for m in messages or [])


class ReviewSession:
    """One reviewer on one sample of one version: the sample, the pairs and the label file."""

    def __init__(self, version_dir: Path, root: Path, reviewer: str, n: int, seed: int):
        self.version_dir, self.root = Path(version_dir), Path(root)
        self.dataset, self.version = self.version_dir.parent.name, self.version_dir.name
        self.seed = seed
        strata = stratify(self.version_dir, read_manifest(self.version_dir))
        self.sample: list[Sampled] = draw(strata, n, seed, f"{self.dataset}@{self.version}")
        self.pairs = load_pairs(self.version_dir, [s.pair_id for s in self.sample])
        self.log = LabelLog(self.root, self.dataset, self.version, reviewer)
        self.reviewer = self.log.reviewer
        self.lock = threading.Lock()

    def _labelled(self) -> dict[str, Label]:
        active = self.log.active()
        ids = {s.pair_id for s in self.sample}
        return {p: label for p, label in active.items() if p in ids}

    def current(self) -> Sampled | None:
        labelled = self._labelled()
        return next((s for s in self.sample if s.pair_id not in labelled), None)

    def state(self) -> dict:
        labelled = self._labelled()
        current = next((s for s in self.sample if s.pair_id not in labelled), None)
        pair = None
        if current is not None:
            row = self.pairs[current.pair_id]
            other = "rejected" if current.left == "chosen" else "chosen"
            pair = {"pair_id": current.pair_id, "index": self.sample.index(current),
                    "prompt": [{"role": m["role"], "content": m["content"]} for m in row["prompt"]],
                    "left": _text(row[current.left]), "right": _text(row[other])}
        last = list(labelled.values())[-1] if labelled else None
        return {"dataset": self.dataset, "version": self.version, "reviewer": self.reviewer, "seed": self.seed,
                "total": len(self.sample), "done": len(labelled),
                "counts": dict(Counter(label.label for label in labelled.values())),
                "labels_file": str(self.log.path), "pair": pair,
                "last": {"pair_id": last.pair_id, "label": last.label} if last else None}

    def label(self, pair_id: str, choice: str) -> dict:
        with self.lock:
            current = self.current()
            if current is None or current.pair_id != pair_id:
                raise HTTPException(409, f"pair {pair_id} is not the pair being shown (already labelled?): "
                                         "the page now shows the current one")
            self.log.append(Label(reviewer=self.reviewer, dataset=self.dataset, version=self.version,
                                  pair_id=pair_id, left=current.left, label=choice, seed=self.seed,
                                  stratum=current.stratum))
            return {**self.state(), "message": f"saved: {choice}"}

    def undo(self, pair_id: str) -> dict:
        with self.lock:
            labelled = self._labelled()
            last = list(labelled)[-1] if labelled else None
            if last != pair_id:
                raise HTTPException(409, f"the last label is not for pair {pair_id}: nothing was undone")
            self.log.append(Undo(reviewer=self.reviewer, dataset=self.dataset, version=self.version,
                                 pair_id=pair_id))
            return {**self.state(), "message": "undone: the pair is shown again"}

    def close(self) -> None:
        self.log.close()


class LabelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pair_id: str
    label: Literal["left", "right", "tie", "skip"]


class UndoBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pair_id: str


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _ci(ci) -> str:
    return "-" if not ci or ci[0] is None else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def summary_html(session: ReviewSession) -> str:
    audit = audit_version(session.version_dir, session.root, session.dataset, session.version)
    groups = []
    if audit:
        groups = ([("all (unweighted)", {**audit["overall"], "population": audit["version_pairs"]})]
                  + [(f"stratum {k}", v) for k, v in audit["strata"].items()]
                  + [(f"source {k}", v) for k, v in audit["sources"].items()])
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(page.SUMMARY).render(s=session.state(), audit=audit, groups=groups, num=_num, ci=_ci,
                                                headline=headline(audit) if audit else "")


def create_app(session: ReviewSession) -> FastAPI:
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        origin = request.headers.get("origin")
        if request.method == "POST" and origin and urlsplit(origin).hostname not in HOSTS:
            return JSONResponse({"detail": "cross-origin request refused"}, status_code=403)
        if request.method == "POST" and request.headers.get("content-type", "").split(";")[0] != "application/json":
            return JSONResponse({"detail": "send JSON (Content-Type: application/json)"}, status_code=415)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        return response

    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(HOSTS))

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page.HTML

    @app.get("/static/review.js")
    def script() -> Response:
        return Response(page.JS, media_type="text/javascript")

    @app.get("/static/review.css")
    def style() -> Response:
        return Response(page.CSS, media_type="text/css")

    @app.get("/api/state")
    def state() -> dict:
        with session.lock:
            return session.state()

    @app.post("/api/label")
    def label(body: LabelBody) -> dict:
        return session.label(body.pair_id, body.label)

    @app.post("/api/undo")
    def undo(body: UndoBody) -> dict:
        return session.undo(body.pair_id)

    @app.get("/summary", response_class=HTMLResponse)
    def summary() -> str:
        with session.lock:
            return summary_html(session)

    return app


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:`port` (0: any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as err:
        sock.close()
        raise ReviewError(f"cannot listen on 127.0.0.1:{port}: {err.strerror or err}: choose another --port "
                          "(--port 0 takes any free one)", code=1) from None
    sock.listen(64)
    return sock


def serve(session: ReviewSession, sock: socket.socket) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM); labels are on disk as they are made."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(session), log_level="warning", access_log=False,
                                           lifespan="off"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
        pass
    finally:
        sock.close()
        session.close()
