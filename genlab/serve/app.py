"""The web app's routes (Starlette) and its guards.

Pages (static HTML + one script, no build step, no CDN): ``/`` the runs list, ``/run/NAME`` a run,
``/live`` live generation; compare reports are served as they are, ``/files/REPORT/index.html`` with their
pictures. JSON: ``/api/runs``, ``/api/run/NAME`` (``?after=STEP``: only newer metric records, for a run that is
still training), ``/api/options/NAME`` (the live page's controls), and ``/api/generate?run=NAME&...``, a stream of
server-sent events (frames).

Guards, on every request: the Host header must name this server (no DNS rebinding) and an Origin header, when
sent, must be this server's own; files are served only from the runs directory and the app's own assets (``..``,
percent-encoded traversal, absolute paths and symbolic links that leave the directory get 404); nothing is
written, started (other than a generation) or deleted; a run that cannot be read is an error card in the page.
"""
from __future__ import annotations

import asyncio
import json
import queue
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import index
from .live import Busy, Generations, controls

STATIC = Path(__file__).resolve().parent / "static"
PAGES = {"/": "index.html", "/live": "live.html"}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def _split_host(value: str) -> str:
    """The host part of a Host header value ('127.0.0.1:8000' -> '127.0.0.1', '[::1]:80' -> '[::1]')."""
    if value.startswith("["):
        return value.split("]")[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Guard(BaseHTTPMiddleware):
    """403 for a Host header that is not one of ``hosts`` and for an Origin that is not one of this server's."""

    def __init__(self, app, hosts: tuple):
        super().__init__(app)
        self.hosts = {h.lower() for h in hosts}

    async def dispatch(self, request: Request, call_next):
        host = _split_host(request.headers.get("host", "")).lower()
        if host not in self.hosts:
            return PlainTextResponse("refused: unexpected Host header", status_code=403)
        origin = request.headers.get("origin")
        if origin is not None:
            rest = origin.split("://", 1)[-1]
            if _split_host(rest).lower() not in self.hosts:
                return PlainTextResponse("refused: cross-origin request", status_code=403)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


def safe_file(root: Path, rel: str):
    """``root/rel`` when it is a regular file inside ``root`` after resolving links, else None."""
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        return None
    if any(p in ("", ".", "..") for p in rel.split("/")):
        return None
    try:
        p = (root / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return p if p.is_file() and p.is_relative_to(root.resolve()) else None


def create_app(runs_dir, *, hosts: tuple = LOCAL_HOSTS, generations: Generations = None) -> Starlette:
    root = Path(runs_dir).resolve()
    gens = generations or Generations()

    def not_found(what="not found"):
        return JSONResponse({"error": what}, status_code=404)

    async def page(request: Request):
        return FileResponse(STATIC / PAGES[request.url.path], media_type="text/html")

    async def run_page(request: Request):
        if index.find_dir(root, request.path_params["name"]) is None:
            return PlainTextResponse("no such run", status_code=404)
        return FileResponse(STATIC / "run.html", media_type="text/html")

    async def static(request: Request):
        p = safe_file(STATIC, request.path_params["path"])
        return FileResponse(p) if p else PlainTextResponse("not found", status_code=404)

    async def files(request: Request):
        p = safe_file(root, request.path_params["path"])
        if p is None:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(p, headers={"Cache-Control": "no-cache"})

    async def api_runs(request: Request):
        rows = await asyncio.to_thread(index.scan, root)
        return JSONResponse({"root": str(root), "runs": rows})

    async def api_run(request: Request):
        d = index.find_dir(root, request.path_params["name"])
        if d is None or not (d / "config.yaml").exists():
            return not_found("no such run")
        after = request.query_params.get("after")
        if after is not None:
            try:
                after = int(after)
            except ValueError:
                return JSONResponse({"error": "after must be a step number"}, status_code=400)
            return JSONResponse({"metrics": index.read_metrics(d, after), "grids": index.grids(d),
                                 "status": index.run_status(d)})
        return JSONResponse(await asyncio.to_thread(index.run_detail, d, root))

    async def api_options(request: Request):
        d = index.find_dir(root, request.path_params["name"])
        if d is None or not (d / "config.yaml").exists():
            return not_found("no such run")
        try:
            run = await asyncio.to_thread(gens.runs.get, d)
            return JSONResponse(controls(run))
        except Exception as e:          # a damaged or half-written run: its reason, not a 500 page
            return JSONResponse({"error": f"{type(e).__name__}: {e}"[:500]}, status_code=422)

    async def api_generate(request: Request):
        params = dict(request.query_params)
        d = index.find_dir(root, params.pop("run", ""))
        if d is None or not (d / "config.yaml").exists():
            return not_found("no such run")
        try:
            events, cancel = gens.start(d, params)
        except Busy as e:
            return JSONResponse({"error": str(e)}, status_code=429)

        async def stream():
            try:
                while True:
                    if await request.is_disconnected():
                        break
                    try:
                        ev = await asyncio.to_thread(events.get, True, 0.2)
                    except queue.Empty:
                        continue
                    if ev is None:
                        break
                    yield f"event: {ev['event']}\ndata: {json.dumps(ev)}\n\n"
            finally:
                cancel.set()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def favicon(request: Request):
        return Response(status_code=204)

    routes = [Route("/", page), Route("/live", page), Route("/run/{name:path}", run_page),
              Route("/static/{path:path}", static), Route("/files/{path:path}", files),
              Route("/api/runs", api_runs), Route("/api/run/{name:path}", api_run),
              Route("/api/options/{name:path}", api_options), Route("/api/generate", api_generate),
              Route("/favicon.ico", favicon)]
    app = Starlette(routes=routes, middleware=[Middleware(Guard, hosts=tuple(hosts))])
    app.state.root, app.state.generations = root, gens
    return app
