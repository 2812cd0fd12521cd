"""A small threaded HTTP endpoint for read-only pages (metrics, health), off the event loop.

``wsgiref`` with one thread per request: a scrape or a page load never runs on a node's
event loop, and a slow reader never blocks another. Used by a node's ``/metrics`` endpoint
and by ``swarmnode monitor``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

WsgiApp = Callable[[dict, Callable], Iterable[bytes]]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        pass


class HttpEndpoint:
    """Serves a WSGI ``app`` on ``host:port`` (0 = a free port) from its own thread; ``close()``
    stops it. ``port`` is the bound port."""

    def __init__(self, app: WsgiApp, host: str, port: int, name: str = "swarmnode-http"):
        self._server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def respond(start_response: Callable, status: str, body: str | bytes, content_type: str = "text/plain") -> list[bytes]:
    """Send a whole response (UTF-8 for text)."""
    data = body.encode() if isinstance(body, str) else body
    start_response(status, [("Content-Type", f"{content_type}; charset=utf-8"), ("Content-Length", str(len(data)))])
    return [data]
