"""A fake Alpaca bars endpoint on 127.0.0.1 that the real alpaca-py client talks to through url_override."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class FakeAlpaca:
    """Answers GET /v2/stocks/bars with whatever `respond(query)` returns: (status, body-bytes-or-json)."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parsed = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(parsed.query).items()}
                fake.requests.append({"path": parsed.path, "query": query, "headers": dict(self.headers)})
                status, body = fake.respond(query)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                try:
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (the timeout tests' slow answers)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def window_bars(frame, query: dict) -> list[dict]:
    """The rows of a canonical bar frame inside the request's [start, end], as Alpaca's bar objects."""
    import pandas as pd

    rows = frame[(frame.index >= pd.Timestamp(query["start"])) & (frame.index <= pd.Timestamp(query["end"]))]
    return [{"t": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "o": r.open, "h": r.high, "l": r.low, "c": r.close,
             "v": r.volume, "n": 1, "vw": r.close} for t, r in zip(rows.index, rows.itertuples())]


def bars_page(frame, query: dict) -> tuple[int, dict]:
    """Alpaca's whole answer to a bars request over one symbol's frame: one page, and no symbol key when the
    window holds no bars (as Alpaca answers)."""
    bars = window_bars(frame, query)
    return 200, {"bars": {query["symbols"]: bars} if bars else {}, "next_page_token": None}
