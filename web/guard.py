"""The web server's defence against idle and slow clients: a bounded number of connections, a bounded time to
send a request's headers, and file descriptors kept back for the forecaster itself.

uvicorn accepts every connection it can and keeps one that never finishes its headers for as long as the client
likes; a few hundred half-open connections then use up the process's descriptors, and the forecaster can no
longer write its files or reach Redis and Alpaca (asyncio also logs one traceback per failed accept, thousands a
second). ``GuardedH11Protocol`` replaces uvicorn's HTTP protocol: when the connections reach the cap, the
longest-waiting one that is not in the middle of a request is closed to make room (so an authorised client always
gets in), and a connection that has not sent a whole request within ``HEADER_TIMEOUT_S`` is closed. The cap comes
from the descriptor limit, less what the process already uses and a reserve, and the accept loop takes at most
``BACKLOG`` connections per turn, so the descriptors never run out.
"""
from __future__ import annotations

import itertools
import logging
import os
import resource
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)
HEADER_TIMEOUT_S = 10.0     # a request's headers, from the connection (or the previous response) to the last byte
MAX_CONNECTIONS = 256       # plenty for a page, its API and a few dashboards
RESERVE_FDS = 64            # kept for the forecaster: its files, the run log, Redis, Alpaca's REST and stream
BACKLOG = 32                # connections accepted per event-loop turn (asyncio accepts up to the backlog at once)
MAX_HEADER_BYTES = 16 * 1024  # h11's limit on a request's incomplete headers


def open_descriptors() -> int:
    """How many file descriptors this process holds now (Linux /proc; elsewhere a guess of 64)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 64


def connection_cap(soft_limit: int | None = None, in_use: int | None = None) -> int:
    """The most connections the server keeps: the descriptor limit less those in use, the reserve and what one
    burst of accepts can hold before the excess is closed; at most MAX_CONNECTIONS, at least 4."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft_limit == resource.RLIM_INFINITY:
            soft_limit = 1 << 20
    in_use = open_descriptors() if in_use is None else in_use
    room = soft_limit - in_use - RESERVE_FDS - 3 * BACKLOG  # accepted, transports made, closes pending
    return max(4, min(MAX_CONNECTIONS, room))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap (``cap``, set by the server's owner) and a header deadline."""

    cap = MAX_CONNECTIONS
    header_timeout_s = HEADER_TIMEOUT_S
    evicted = 0          # connections closed to make room, since start (for /health and the tests)
    timed_out = 0        # connections closed for not sending their request in time
    _order = itertools.count()

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._serial = next(self._order)
        self._header_timer = None
        self._arm_header_deadline()
        open_ = [c for c in self.connections if not c.transport.is_closing()]  # closing ones go next turn
        if len(open_) > self.cap:
            idle = [c for c in open_ if c is not self and _idle(c)]
            victim = min(idle, key=lambda c: getattr(c, "_serial", -1)) if idle else self
            type(self).evicted += 1
            victim.transport.abort()  # no goodbye owed to a client that never finished a request

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_deadline()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()  # a kept-alive connection must send its next request in time too

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        waiting_after = self.cycle  # the request (or None) that was current when the wait began
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_deadline, waiting_after)

    def _cancel_header_deadline(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_deadline(self, waiting_after: Any) -> None:
        self._header_timer = None
        if self.cycle is waiting_after and _idle(self) and not self.transport.is_closing():
            type(self).timed_out += 1
            self.transport.abort()


def _idle(protocol: Any) -> bool:
    """Not in the middle of a request: still waiting for headers, or its last response is done."""
    cycle = getattr(protocol, "cycle", None)
    return cycle is None or bool(getattr(cycle, "response_complete", False))


def guarded_protocol(cap: int) -> type[GuardedH11Protocol]:
    """A protocol class of its own for one server (the counters and the cap are per server)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"cap": cap, "evicted": 0, "timed_out": 0,
                                                               "_order": itertools.count()})
