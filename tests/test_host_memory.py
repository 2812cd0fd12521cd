"""Nodes on one host share its memory: the ledger's arithmetic, and the ledger with real processes."""

import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import psutil
import pytest

from swarmnode.server.host_memory import Claim, HostLedger, not_yet_held

GIB = 1 << 30


def test_not_yet_held_counts_what_other_live_nodes_claimed_beyond_what_they_hold():
    claims = [
        Claim(pid=10, started=0, device="cpu", claimed=2 * GIB, baseline_rss=300 << 20),  # loading
        Claim(pid=11, started=0, device="cpu", claimed=GIB, baseline_rss=300 << 20),  # loaded
        Claim(pid=12, started=0, device="cpu", claimed=GIB, baseline_rss=0),  # gone
        Claim(pid=13, started=0, device="cuda:0", claimed=GIB, baseline_rss=0, held=GIB // 4),  # other device
        Claim(pid=99, started=0, device="cpu", claimed=8 * GIB, baseline_rss=0),  # this node itself
    ]
    resident = {10: (300 << 20) + GIB // 2, 11: (300 << 20) + 2 * GIB, 13: 1 << 20, 99: 0}
    pending = not_yet_held(claims, "cpu", me=99, resident=lambda c: resident.get(c.pid))
    assert pending == 2 * GIB - GIB // 2, "only the loading node's remaining 1.5 GiB"
    gpu = not_yet_held(claims, "cuda:0", me=99, resident=lambda c: resident.get(c.pid))
    assert gpu == GIB - GIB // 4, "a GPU node holds what it reported"


def test_a_malformed_entry_is_ignored():
    assert Claim.from_json({"pid": "x"}) is None
    assert Claim.from_json([1, 2]) is None
    assert Claim.from_json({"pid": 5, "started": 1, "device": "cpu", "claimed": -1, "baseline_rss": 0}) is None


@pytest.fixture
def sleeper():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_live_nodes_claim_counts_until_its_process_is_gone(tmp_path, sleeper):
    ledger = HostLedger(tmp_path)
    other = psutil.Process(sleeper.pid)
    time.sleep(0.2)
    entry = Claim(sleeper.pid, other.create_time(), "cpu", 3 * GIB, other.memory_info().rss)
    (tmp_path / f"{sleeper.pid}.json").write_text(json.dumps(asdict(entry)))
    (tmp_path / "junk.json").write_text("not json")
    with ledger.locked():
        ledger.claim(5 * GIB)  # this process's own claim never counts against itself
        assert 3 * GIB - (64 << 20) < ledger.others_not_yet_held() <= 3 * GIB
    sleeper.kill()
    sleeper.wait()
    with ledger.locked():
        assert ledger.others_not_yet_held() == 0
    assert not (tmp_path / f"{sleeper.pid}.json").exists(), "a gone process's entry is removed"
    ledger.release()
    assert [p.name for p in tmp_path.glob("*.json")] == ["junk.json"]


def test_the_lock_keeps_a_second_node_out_while_the_first_sizes_and_claims(tmp_path):
    first, second = HostLedger(tmp_path), HostLedger(tmp_path)
    order = []

    def other_node():
        with second.locked():
            order.append("second")

    with first.locked():
        thread = threading.Thread(target=other_node)
        thread.start()
        time.sleep(0.3)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"]
