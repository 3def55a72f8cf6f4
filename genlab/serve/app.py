"""The web app's routes (Starlette) and its guards.

Pages (static HTML + one script, no build step, no CDN): ``/`` the runs list, ``/run/NAME`` a run,
``/live`` live generation; compare reports are served as they are, ``/files/REPORT/index.html`` with their
pictures. JSON: ``/api/runs``, ``/api/run/NAME`` (``?since=LINES``: only the metric records after the first LINES
lines, with the status and summary, for a run that is still training), ``/api/options/NAME`` (the live page's controls), and ``/api/generate?run=NAME&...``, a stream of
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


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class Guard(BaseHTTPMiddleware):
    """403 for a Host header that is not one of ``hosts`` (with ``ip_literals``, a server listening on every
    interface, any IP address too: DNS rebinding needs a name), for an Origin that is not exactly this server's
    (scheme, host and port of the Host header), and for requests a browser marks as coming from another site
    (``Sec-Fetch-Site``: an <img> or a no-cors fetch on another page sends no Origin)."""

    def __init__(self, app, hosts: tuple, ip_literals: bool = False):
        super().__init__(app)
        self.hosts, self.ip_literals = {h.lower() for h in hosts}, ip_literals

    async def dispatch(self, request: Request, call_next):
        raw = request.headers.get("host", "").lower()
        host = _split_host(raw)
        if host not in self.hosts and not (self.ip_literals and _is_ip(host)):
            return PlainTextResponse("refused: unexpected Host header", status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and origin.lower() != f"http://{raw}":
            return PlainTextResponse("refused: cross-origin request", status_code=403)
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return PlainTextResponse("refused: cross-site request", status_code=403)
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


def create_app(runs_dir, *, hosts: tuple = LOCAL_HOSTS, generations: Generations = None,
               ip_literals: bool = False) -> Starlette:
    root = Path(runs_dir).resolve()
    gens = generations or Generations()

    def not_found(what="not found"):
        return JSONResponse({"error": what}, status_code=404)

    def unreadable(e: Exception):
        """A run whose files cannot be read (permissions, a disk error): its reason for the page's error card."""
        return JSONResponse({"error": f"cannot read this run: {type(e).__name__}: {e}"[:500]}, status_code=422)

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
        since = request.query_params.get("since")
        if since is not None:
            try:
                since = int(since)
                if since < 0:
                    raise ValueError
            except ValueError:
                return JSONResponse({"error": "since must be a line count (>= 0)"}, status_code=400)
            try:
                metrics, lines = index.read_metrics(d, since)
                s = index.summary(d, root)
                return JSONResponse({"metrics": metrics, "lines": lines, "grids": index.grids(d),
                                     "status": s.get("status"), "best_val_loss": s.get("best_val_loss"),
                                     "latest_fid": s.get("latest_fid")})
            except OSError as e:
                return unreadable(e)
        try:
            return JSONResponse(await asyncio.to_thread(index.run_detail, d, root))
        except OSError as e:
            return unreadable(e)

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
        # a browser's EventSource (Accept: text/event-stream) cannot read an error status: it gets the refusal as
        # one error event; other clients get the JSON error with its status
        sse = "text/event-stream" in request.headers.get("accept", "")

        def refuse(message: str, status: int):
            if sse:
                body = f"event: error\ndata: {json.dumps({'event': 'error', 'message': message})}\n\n"
                return Response(body, media_type="text/event-stream")
            return JSONResponse({"error": message}, status_code=status)

        d = index.find_dir(root, params.pop("run", ""))
        if d is None or not (d / "config.yaml").exists():
            return refuse("no such run", 404)
        try:
            events, cancel = gens.start(d, params)
        except Busy as e:
            return refuse(str(e), 429)

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
    app = Starlette(routes=routes, middleware=[Middleware(Guard, hosts=tuple(hosts), ip_literals=ip_literals)])
    app.state.root, app.state.generations = root, gens
    return app
