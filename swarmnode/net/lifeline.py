"""Make a process's helpers die with it, even when it is SIGKILLed.

hivemind runs the DHT in a forked child and ``p2pd`` as that child's child. If the
main process is killed outright (the OOM killer, ``kill -9``) they would live on as
orphans: the DHT peer stays in the swarm and p2pd keeps connections open, so other
peers see no connection error. A lifeline is a tiny watcher process: it waits on a
pidfd of its parent and, when the parent is gone, kills the processes it was given
(and their descendants). It runs in a session of its own, so that a signal to its
parent's whole process group leaves it standing to do that. Run as ``python -m swarmnode.net.lifeline PARENT PID...``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

import psutil


def start_lifeline(pids: list[int]) -> subprocess.Popen:
    """Start a watcher that kills ``pids`` (and their children) once this process dies."""
    tree = set(pids)
    for pid in pids:
        try:
            tree.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    args = [sys.executable, "-m", "swarmnode.net.lifeline", str(os.getpid()), *map(str, sorted(tree))]
    # Its own session: a signal to this process's whole group (`timeout`, a shell, a supervisor)
    # must not take the watcher with it, or the helpers outlive their process. It is stopped by
    # its pid (stop_lifeline).
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)


def stop_lifeline(proc: subprocess.Popen | None) -> None:
    """Stop a watcher after a clean shutdown (its processes are gone already)."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()


def reap_children(grace_s: float = 2.0) -> None:
    """Stop every remaining descendant of this process (for CLI processes on their way out).

    Besides the DHT process and p2pd, torch may leave its ``torch_shm_manager`` helper behind.
    """
    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue


def _watch(parent: int, pids: list[int]) -> None:
    guarded = []
    for pid in pids:
        try:
            guarded.append(psutil.Process(pid))  # remembers create_time: no pid-reuse accidents
        except psutil.NoSuchProcess:
            continue
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        fd = os.pidfd_open(parent)
        select.select([fd], [], [])
    except ProcessLookupError:
        pass  # parent already gone
    for proc in guarded:
        try:
            for child in proc.children(recursive=True):
                child.kill()
            proc.kill()
        except psutil.NoSuchProcess:
            continue


if __name__ == "__main__":
    _watch(int(sys.argv[1]), [int(p) for p in sys.argv[2:]])
