"""``swarmnode monitor``: a read-only swarm exporter with a health page.

A client-mode DHT peer (it serves no blocks) re-reads every model's records on its own
thread every ``refresh_period`` seconds and swaps in a new :class:`SwarmHealth`. An HTTP
endpoint on another thread serves, from that health alone (no DHT I/O in a request):

- ``/``            the health page (a block map per model; it refreshes itself)
- ``/api/health``  the same data as JSON
- ``/metrics``     swarm-wide Prometheus series (see :mod:`swarmnode.monitor.exporter`)
- ``/healthz``     alive; ``/readyz``: 200 once the swarm has been read

With ``write_targets`` it also keeps a Prometheus file-SD targets file of every live node's
metrics address. If the swarm cannot be reached, the monitor keeps serving (the page says
so) and keeps retrying.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

from prometheus_client import make_wsgi_app

from swarmnode.client.swarm import SwarmConnection
from swarmnode.config import ClientConfig, load_config
from swarmnode.files import write_json_atomically
from swarmnode.monitor.exporter import MonitorMetrics
from swarmnode.monitor.health import (
    SwarmHealth,
    health_json,
    model_health,
    recall,
    scrape_targets,
    verdict_subjects,
)
from swarmnode.net.dht import get_dht_time
from swarmnode.net.http import HttpEndpoint, respond

logger = logging.getLogger(__name__)
READ_TIMEOUT_S = 30.0


class SwarmMonitor:
    """Watches a swarm and serves what it sees; ``close()`` stops it (the CLI calls it on SIGTERM)."""

    def __init__(
        self,
        initial_peers: list[str],
        host: str = "0.0.0.0",
        port: int = 9157,
        refresh_period: float = 5.0,
        write_targets: str | os.PathLike | None = None,
        model_id: str | None = None,
        retention_s: float = 600.0,
        swarm_key_path: str = "",
    ):
        self.swarm_key_path = swarm_key_path  # a private swarm's key: the monitor is a member's tool
        if refresh_period <= 0:
            raise ValueError("refresh_period must be positive")
        self.initial_peers = tuple(initial_peers)
        self.refresh_period = refresh_period
        self.targets_path = Path(write_targets) if write_targets else None
        self.model_id = model_id
        self.retention_s = retention_s  # how long a node whose record expired stays on the page (as DEAD)
        self._memory: dict[str, dict] = {}  # model id → peer id → (last record, when last seen)
        self.health = SwarmHealth(initial_peers=self.initial_peers, refresh_period_s=refresh_period)
        self.metrics = MonitorMetrics(lambda: self.health)
        self._seen_verdicts: set[tuple[str, str, int]] = set()
        self._stop = threading.Event()
        self._connection: SwarmConnection | None = None
        self._endpoint = HttpEndpoint(self._app(), host, port, name="swarmnode-monitor-http")
        self.port = self._endpoint.port
        self._thread = threading.Thread(target=self._refresh_loop, name="swarmnode-monitor-refresh", daemon=True)
        self._thread.start()

    # ---- refreshing --------------------------------------------------------------------------------
    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                self.refresh()
            except Exception as e:  # noqa: BLE001 - any failure is shown on the page; we retry next period
                logger.warning("cannot read the swarm: %s", e)
                self.metrics.refresh_failures.inc()
                self.health = replace(self.health, error=f"cannot reach the swarm: {e}")
                self._drop_connection()
            self._stop.wait(max(0.0, self.refresh_period - (time.monotonic() - began)))

    def refresh(self) -> SwarmHealth:
        """Read every model's records once and publish the result (called by the refresh thread)."""
        began = time.monotonic()
        if self._connection is None:
            config = load_config(
                ClientConfig, {"initial_peers": self.initial_peers, "swarm_key_path": self.swarm_key_path or None}
            )
            self._connection = SwarmConnection(config)
        connection = self._connection
        models = connection.run(connection.models(), timeout=READ_TIMEOUT_S)
        wanted = sorted(m for m in models if self.model_id in (None, m))
        healths = []
        for model_id in wanted:
            record = models[model_id]
            snapshot = connection.run(connection.snapshot(model_id, record.num_blocks, max_age=0), READ_TIMEOUT_S)
            self._count_new_verdicts(model_id, verdict_subjects(snapshot))
            now = get_dht_time()
            snapshot, vanished, self._memory[model_id] = recall(
                snapshot, self._memory.get(model_id, {}), now, self.retention_s
            )
            healths.append(model_health(snapshot, record, now, vanished))
        error = "" if models else "no models found: no node has announced one, or the initial peers are unreachable"
        self.health = SwarmHealth(
            models=tuple(healths),
            refreshed_at=time.time(),
            error=error,
            initial_peers=self.initial_peers,
            refresh_period_s=self.refresh_period,
        )
        self.metrics.refreshes.inc()
        self.metrics.refresh_seconds.observe(time.monotonic() - began)
        if self.targets_path is not None:
            write_targets(self.targets_path, scrape_targets(self.health))
        return self.health

    def _count_new_verdicts(self, model_id: str, dead: dict[str, int]) -> None:
        counter = self.metrics.dead_verdicts_seen.labels(model_id)  # exists (at 0) from the model's first read
        for peer_id, incarnation in dead.items():
            key = (model_id, peer_id, incarnation)
            if key not in self._seen_verdicts:
                self._seen_verdicts.add(key)
                counter.inc()

    def _drop_connection(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            try:
                connection.close()
            except Exception as e:  # noqa: BLE001 - a broken connection is replaced anyway
                logger.debug("closing a broken connection: %s", e)

    # ---- serving -----------------------------------------------------------------------------------
    def _app(self):
        metrics_app = make_wsgi_app(self.metrics.registry)
        page = files("swarmnode.monitor").joinpath("health.html").read_text(encoding="utf-8")

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path in ("/", "/index.html"):
                return respond(start_response, "200 OK", page, "text/html")
            if path == "/api/health":
                body = json.dumps(health_json(self.health))
                return respond(start_response, "200 OK", body, "application/json")
            if path == "/metrics":
                return metrics_app(environ, start_response)
            if path == "/healthz":
                return respond(start_response, "200 OK", "ok\n")
            if path == "/readyz":
                if self.health.refreshed_at > 0:
                    return respond(start_response, "200 OK", "ready\n")
                return respond(start_response, "503 Service Unavailable", "the swarm has not been read yet\n")
            return respond(start_response, "404 Not Found", "not found: try /, /api/health or /metrics\n")

        return app

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=READ_TIMEOUT_S + 5)
        self._endpoint.close()
        self._drop_connection()


def write_targets(path: Path, groups: list[dict]) -> None:
    """Write a file-SD targets file atomically (Prometheus never reads half a file)."""
    write_json_atomically(path, groups, indent=1)
