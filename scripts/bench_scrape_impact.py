"""Does scraping a node's /metrics during generation change its step latency?

Starts a local swarm (bootstrap + 3 nodes, each its own process) and a client, then
alternates rounds without and with a scraper that fetches every node's /metrics every
``--interval`` seconds (default 0.1 s: 150 times Prometheus' default rate of one scrape per
15 s). Prints the median per-token latency of each, their ratio, and what one scrape costs.
Not a test: these machines are noisy; rounds alternate so drift hits both sides alike.

    python scripts/bench_scrape_impact.py [--model smollm2|tiny] [--rounds 6] [--tokens 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.request

import torch

from swarmnode.client.model import DistributedModelForCausalLM
from swarmnode.client.trace import ArrivalStamps
from swarmnode.launcher import LocalSwarm
from swarmnode.models.gguf import resolve_model

LAYOUTS = {"smollm2": ("0:10", "10:20", "20:30"), "tiny": ("0:3", "3:6", "6:8")}


class Scraper(threading.Thread):
    """Fetches every URL in turn every ``interval`` seconds until stopped; records each scrape's time."""

    def __init__(self, urls: list[str], interval: float):
        super().__init__(daemon=True)
        self.urls, self.interval = urls, interval
        self.stop_event = threading.Event()
        self.durations: list[float] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            for url in self.urls:
                began = time.perf_counter()
                with urllib.request.urlopen(url, timeout=5) as response:
                    response.read()
                self.durations.append(time.perf_counter() - began)
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


def token_gaps_ms(model, ids, tokens: int) -> list[float]:
    stamps = ArrivalStamps()
    model.generate(ids, max_new_tokens=tokens, streamer=stamps)
    return [1000 * gap for gap in stamps.token_gaps()]  # the prompt's step excluded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", choices=sorted(LAYOUTS))
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each kind, alternating")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between scrapes of all nodes")
    args = parser.parse_args()
    path = str(resolve_model(args.model).path)
    with tempfile.TemporaryDirectory() as workdir, LocalSwarm(workdir) as swarm:
        maddr = swarm.start_bootstrap()
        nodes = [swarm.start_node(path, span, wait=False) for span in LAYOUTS[args.model]]
        for node in nodes:
            swarm.wait_online(node)
        urls = [f"http://{node.info['metrics']}/metrics" for node in nodes]
        ids = torch.randint(0, 100, (1, 8), generator=torch.Generator().manual_seed(0))
        quiet: list[float] = []
        scraped: list[float] = []
        scrapes: list[float] = []
        with DistributedModelForCausalLM.from_pretrained(path, initial_peers=[maddr]) as model:
            token_gaps_ms(model, ids, 4)  # warm-up
            for _ in range(args.rounds):
                quiet += token_gaps_ms(model, ids, args.tokens)
                scraper = Scraper(urls, args.interval)
                scraper.start()
                scraped += token_gaps_ms(model, ids, args.tokens)
                scraper.stop()
                scrapes += scraper.durations
    q, s = statistics.median(quiet), statistics.median(scraped)
    print(f"model {args.model}, {len(LAYOUTS[args.model])} nodes, {args.rounds} rounds of {args.tokens} tokens each")
    print(f"per-token latency, no scraping:      median {q:.2f} ms, p90 {statistics.quantiles(quiet, n=10)[-1]:.2f} ms")
    print(f"per-token latency, scraped every {args.interval:g} s: median {s:.2f} ms, "
          f"p90 {statistics.quantiles(scraped, n=10)[-1]:.2f} ms")  # fmt: skip
    print(f"ratio scraped / quiet (median): {s / q:.3f}")
    print(f"one scrape of /metrics: median {1000 * statistics.median(scrapes):.2f} ms over {len(scrapes)} scrapes")


if __name__ == "__main__":
    main()
