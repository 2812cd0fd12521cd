"""What a person reads: the join progress (a bar on a terminal, log lines otherwise) and the
status table."""

from __future__ import annotations

import io
import logging

from swarmnode.client.status import format_status
from swarmnode.server.progress import LoadProgress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_join_progress_is_a_bar_on_a_terminal():
    screen = Terminal()
    progress = LoadProgress(screen)
    for done in range(1, 5):
        progress(done, 4)
    text = screen.getvalue()
    assert "loading blocks" in text and "4/4" in text and "\r" in text  # redrawn in place


def test_join_progress_is_log_lines_in_a_log(caplog):
    progress = LoadProgress(io.StringIO())
    with caplog.at_level(logging.INFO, logger="swarmnode.server.progress"):
        for done in range(1, 4):
            progress(done, 3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[-1].startswith("loading blocks: 3/3 (100%)")


NODE = {
    "peer_id": "12D3KooWBtjV8nfPvAAUxeJyyaa71u83UBYBXfSrruM8oicssgVJ", "public_name": "alice", "state": "ONLINE",
    "start": 0, "end": 3, "inference_rps": 123.4, "active_sessions": 2, "busy": 0.25, "cache_tokens_left": 100,
    "dtype": "float32", "quantization": "nf4", "layout": "packed", "version": "0.1.0", "metrics_addr": "127.0.0.1:9156",
}  # fmt: skip


def test_status_prints_a_table_with_one_row_per_node():
    report = {"models": [{"model_id": "m", "family": "llama", "num_blocks": 4, "gaps": [[3, 4]],
                          "coverage": [1, 1, 1, 0], "nodes": [NODE, {**NODE, "peer_id": "12D3KooWother",
                                                                     "state": "DEAD", "busy": None}]}]}  # fmt: skip
    text = format_status(report, width=200)
    lines = text.splitlines()
    assert lines[0] == "model m (llama, 4 blocks): 3/4 blocks served, gaps: 3:4"
    assert lines[1] == "replicas per block: 1 1 1 0"
    header = next(line for line in lines if "PEER ID" in line)
    assert header.split() == ["PEER", "ID", "NAME", "STATE", "BLOCKS", "TOK/S/BLOCK", "SESSIONS", "BUSY",
                              "CACHE", "LEFT", "DTYPE", "QUANT", "LAYOUT", "VERSION", "METRICS", "REACHED"]  # fmt: skip
    row = next(line for line in lines if NODE["peer_id"] in line).split()
    assert row == [NODE["peer_id"], "alice", "ONLINE", "0:3", "123", "2", "25%", "100", "float32", "nf4", "packed",
                   "0.1.0", "127.0.0.1:9156", "direct"]  # fmt: skip
    relayed = format_status({"models": [{**report["models"][0], "nodes": [{**NODE, "relay": "QmRelayPeer12345678"}]}]})
    assert "via 12345678" in relayed
    older = {k: v for k, v in NODE.items() if k != "layout"}  # a report from before layouts existed
    assert "dense" in format_status({"models": [{**report["models"][0], "nodes": [older]}]}, width=200).split()
    assert next(line for line in lines if "12D3KooWother" in line).split()[2:7] == ["DEAD", "0:3", "123", "2", "-"]
    assert all(line == line.rstrip() for line in lines)
    assert format_status({"models": []}) == "no models are served in this swarm yet"
