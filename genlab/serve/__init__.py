"""``genlab serve``: a local web app over a runs directory: the runs list, a run page that follows a training
as it goes, compare reports, and live generation from any checkpoint (see :mod:`genlab.serve.app` for the
routes and their guards, :mod:`genlab.serve.live` for the generation stream). Starlette + uvicorn: an ASGI app
and its server with few dependencies of their own; the front end is static HTML and one script, served locally.
"""
from __future__ import annotations

import errno
import socket
import sys
from pathlib import Path

from .app import LOCAL_HOSTS, create_app  # noqa: F401


def check_port(host: str, port: int) -> None:
    """OSError with a clear message when ``host:port`` cannot be bound (in use, or not an address here)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OSError(e.errno, f"port {port} on {host} is already in use (another genlab serve?): pick "
                                       f"another with --port") from None
            raise OSError(e.errno, f"cannot listen on {host}:{port} ({e.strerror})") from None


def serve(runs="runs", host: str = "127.0.0.1", port: int = 8000, log=print) -> None:
    """Serve ``runs`` at http://host:port until interrupted."""
    import uvicorn

    root = Path(runs)
    if not root.is_dir():
        raise FileNotFoundError(f"--runs {runs}: no such directory (train a run first: genlab train ...)")
    hosts = set(LOCAL_HOSTS)
    wildcard = host in ("0.0.0.0", "::", "[::]")
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host}, not only on this machine: anyone who can reach {host}:{port} can see "
              f"your runs and use this machine's CPU/GPU to generate", file=sys.stderr)
        hosts.add(host)
        if wildcard:
            hosts.add(socket.gethostname().lower())
    check_port(host, port)
    app = create_app(root, hosts=tuple(hosts), ip_literals=wildcard)
    shown = f"[{host}]" if ":" in host else host
    log(f"genlab serve: {root.resolve()} at http://{shown}:{port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=host.strip("[]"), port=port, log_level="warning")
