"""The web server of the live service: uvicorn serving the app on the socket the service bound, on its own
thread. serve.py hands ``start_web`` to live.service.Service, so the service never imports the web side."""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


def start_web(hub: Any, token: str | None, sock: socket.socket, threads: list[threading.Thread]) -> Any:
    """uvicorn serving web.app.create_app(hub, token) on the bound socket, on its own thread, behind
    web.guard: connections capped by the descriptor limit, a deadline for each request's headers."""
    import uvicorn

    from web.app import create_app
    from web.guard import BACKLOG, HEADER_TIMEOUT_S, MAX_HEADER_BYTES, connection_cap, guarded_protocol

    cap = connection_cap()
    # log_config=None: uvicorn's records go through our handler (one format, repeats rate-limited)
    server = uvicorn.Server(uvicorn.Config(create_app(hub, token), log_level="warning", access_log=False,
                                           log_config=None, lifespan="on", timeout_graceful_shutdown=3,
                                           http=guarded_protocol(cap), backlog=BACKLOG, timeout_keep_alive=5,
                                           h11_max_incomplete_event_size=MAX_HEADER_BYTES))
    log.info("web server: at most %d connections, %g s to send a request", cap, HEADER_TIMEOUT_S)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="web", daemon=True)
    thread.start()
    threads.append(thread)
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("the web server did not start")
    return server
