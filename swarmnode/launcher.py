"""Start and stop a local swarm of real processes (bootstrap peer + nodes) on 127.0.0.1.

Used by ``swarmnode demo``, the swarm tests and the benchmarks. Every process runs in
its own process group (so its DHT child and p2pd go with it) and is stopped by its id.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from swarmnode.net.lifeline import start_lifeline, stop_lifeline

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SwarmProcess:
    """One process of the local swarm with its stdout lines collected in the background."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    lifeline: subprocess.Popen | None = None
    lines: queue.Queue = field(default_factory=queue.Queue)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.popen.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix`` (RuntimeError if the process dies first)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: no {prefix!r} line within {timeout:.0f} s; see {self.log_path}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.name} exited with {self.popen.wait()}; log:\n{self.log_tail()}")
            if line.startswith(prefix):
                return line

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to this process only (not its helpers)."""
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; then SIGKILL the whole process group (by its id)."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()
        return self.popen.poll()

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)  # the group id is the leader's pid (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        stop_lifeline(self.lifeline)


def _wait_http(proc: SwarmProcess, url: str, timeout: float) -> None:
    """Wait until ``url`` answers 200; stop ``proc`` and raise if it exits or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.wait()}; log:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.3)
    proc.stop()
    raise TimeoutError(f"{proc.name} did not answer {url} within {timeout:.0f} s; see {proc.log_path}")


class LocalSwarm:
    """A bootstrap peer plus nodes, each its own process; a context manager that stops them all."""

    def __init__(self, workdir: str | os.PathLike, env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.processes: list[SwarmProcess] = []
        self.initial_peers: list[str] = []
        self._count = 0

    def _spawn(self, name: str, args: list[str], netns: str | None = None) -> SwarmProcess:
        """Start ``swarmnode ARGS`` (inside network namespace ``netns`` if given: ``ip netns exec``
        execs the command, so the process id is still the command's own)."""
        self._count += 1
        log_path = self.workdir / f"{self._count:02d}-{name}.log"
        log = open(log_path, "w")
        prefix = ["ip", "netns", "exec", netns] if netns else []
        popen = subprocess.Popen(
            [*prefix, sys.executable, "-m", "swarmnode.cli", *args],
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        log.close()
        # If this launcher dies without closing (SIGKILL, a crashed test run), its swarm goes with it.
        proc = SwarmProcess(name, popen, log_path, lifeline=start_lifeline([popen.pid]))
        self.processes.append(proc)
        return proc

    def start_bootstrap(
        self, identity: str | None = None, timeout: float = 60, extra: tuple[str, ...] = (), netns: str | None = None
    ) -> str:
        """Start a bootstrap peer (``extra`` flags win over the defaults); returns its first multiaddr."""
        args = ["bootstrap", "--host-maddrs", LOOPBACK, *extra]
        if identity:
            args += ["--identity", identity]
        proc = self._spawn("bootstrap", args, netns)
        maddr = proc.wait_line("/ip4/", timeout)
        self.initial_peers.append(maddr)
        return maddr

    def start_node(
        self,
        model: str,
        blocks: str = "auto",
        *extra: str,
        wait: bool = True,
        timeout: float = 120,
        name: str | None = None,
        netns: str | None = None,
    ) -> SwarmProcess:
        """Start ``swarmnode join`` (``extra`` flags win over the defaults; in network namespace
        ``netns`` if given); with ``wait``, return once it printed its ONLINE line."""
        args = [
            "join",
            "--model",
            model,
            "--blocks",
            blocks,
            "--initial-peers",
            *self.initial_peers,
            "--host-maddrs",
            LOOPBACK,
            "--num-threads",
            "1",
            "--announce-period",
            "2",
            "--metrics-host",
            "127.0.0.1",  # tests and demos stay on loopback; the port falls back to a free one if taken
            *extra,
        ]
        proc = self._spawn(name or f"node-{blocks.replace(':', '_')}", args, netns)
        if wait:
            self.wait_online(proc, timeout)
        return proc

    def start_api(self, model: str, *extra: str, timeout: float = 120) -> tuple[SwarmProcess, str]:
        """Start ``swarmnode api`` on a free loopback port; returns it and its base URL once it answers."""
        port = free_port()
        proc = self._spawn(f"api-{port}", ["api", "--initial-peers", *self.initial_peers, "--model", model,
                                           "--port", str(port), *extra])  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        _wait_http(proc, f"{base}/v1/models", timeout)
        return proc, base

    def start_monitor(self, *extra: str, timeout: float = 60) -> tuple[SwarmProcess, str]:
        """Start ``swarmnode monitor`` on a free loopback port; returns it and its base URL once it
        has read the swarm (``/readyz``)."""
        port = free_port()
        proc = self._spawn(f"monitor-{port}", ["monitor", "--initial-peers", *self.initial_peers, "--host",
                                               "127.0.0.1", "--port", str(port), *extra])  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        _wait_http(proc, f"{base}/readyz", timeout)
        return proc, base

    @staticmethod
    def wait_online(proc: SwarmProcess, timeout: float = 120) -> SwarmProcess:
        line = proc.wait_line("ONLINE", timeout)
        proc.info = dict(part.split("=", 1) for part in line.split()[1:])
        start, end = proc.info["blocks"].split(":")
        proc.info["start"], proc.info["end"] = int(start), int(end)
        return proc

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop(timeout=10)

    def __enter__(self) -> LocalSwarm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
