"""The lifeline kills a process's helpers when the process dies, however it dies: killed
outright, or by a signal sent to its whole process group (as `timeout`, shells and some
supervisors do), which must not take the watcher with it."""

import os
import signal
import subprocess
import sys

import psutil
import pytest

LAUNCHER = """
import subprocess, sys, time
from swarmnode.net.lifeline import start_lifeline
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
start_lifeline([helper.pid])
print(helper.pid, flush=True)
time.sleep(120)
"""


@pytest.fixture
def launched():
    """A launcher in its own process group, and its helper in another (as a swarm's nodes are)."""
    command = [sys.executable, "-c", LAUNCHER]
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    helper = psutil.Process(int(launcher.stdout.readline()))
    yield launcher, helper
    for proc in (launcher, helper):  # by id, whatever the test did
        try:
            proc.kill()
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    launcher.wait(timeout=10)
    launcher.stdout.close()


def _dies(helper: psutil.Process) -> bool:
    try:
        helper.wait(timeout=15)
    except psutil.TimeoutExpired:
        return False
    return True


def test_the_helper_dies_with_a_launcher_killed_outright(launched):
    launcher, helper = launched
    launcher.kill()
    assert _dies(helper)


def test_the_helper_dies_when_the_launchers_whole_group_is_terminated(launched):
    launcher, helper = launched
    os.killpg(launcher.pid, signal.SIGTERM)
    assert _dies(helper), "the watcher went down with the group and left the helper running"
