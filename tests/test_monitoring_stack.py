"""The monitoring stack end to end: a live swarm of 3 nodes, ``swarmnode monitor`` writing its
targets file, a real Prometheus (Debian's) configured from monitoring/prometheus.yml, a client
generating, and headless Chromium looking at the health page.

- promtool accepts the config and the metrics of a node and of the monitor;
- every PromQL expression of the dashboard returns data through Prometheus' HTTP API;
- the health page draws one row per node and one column per block (screenshot kept);
- killing a node changes coverage, nodes by state and dead verdicts, in the monitor and in
  Prometheus, within gossip's detection time plus a refresh, and the page shows it DEAD.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from swarmnode.launcher import free_port
from tests.conftest import start_swarm, swarm_client
from tests.test_dashboard import MONITORING, dashboard, dashboard_queries

pytestmark = pytest.mark.swarm
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("SWARMNODE_TEST_ARTIFACTS", ROOT / "test-artifacts"))
SPANS = ("0:3", "3:6", "6:8")
REFRESH_S = 1.0
RATE_WINDOW = "10s"  # stands in for Grafana's $__rate_interval (4 scrapes at 1 s, with margin)


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing: run `make system-packages` (Debian's prometheus, chromium, chromium-driver)")
    return path


def get_json(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def wait_for(what: str, check, timeout: float, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Prometheus:
    """Debian's prometheus on a free loopback port, with a config derived from monitoring/prometheus.yml."""

    def __init__(self, workdir: Path, monitor_addr: str, targets_file: Path):
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        jobs = {job["job_name"]: job for job in config["scrape_configs"]}
        jobs["swarmnode-monitor"]["static_configs"] = [{"targets": [monitor_addr]}]
        jobs["swarmnode-nodes"]["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "1s"}]
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        check = subprocess.run([need("promtool"), "check", "config", str(self.config_path)], capture_output=True,
                               text=True)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(workdir / "prometheus.log", "w")
        self.process = subprocess.Popen(
            [need("prometheus"), f"--config.file={self.config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for("prometheus to be ready", self._ready, 60)

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"prometheus exited; see {self.log.name}"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict]:
        answer = get_json(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        self.process.terminate()  # by its id: the process we started, nothing else
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.log.close()


class Generator(threading.Thread):
    """A client generating short answers in a loop until stopped (the swarm's load)."""

    def __init__(self, swarm, path: str):
        super().__init__(name="test-generator", daemon=True)
        self.swarm, self.path = swarm, path
        self.stop_event = threading.Event()
        self.tokens = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        generator = torch.Generator().manual_seed(0)
        with swarm_client(self.swarm, self.path) as model:
            while not self.stop_event.is_set():
                prompt = torch.randint(0, 100, (1, 6), generator=generator)
                try:
                    out = model.generate(prompt, max_new_tokens=8)
                    self.tokens += out.shape[1] - prompt.shape[1]
                except Exception as e:  # noqa: BLE001 - recorded; the kill test ends the load first
                    self.errors.append(e)
                    time.sleep(0.5)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, llama_path):
    workdir = tmp_path_factory.mktemp("monitoring-stack")
    swarm = start_swarm(workdir / "swarm", llama_path, SPANS)
    prometheus = generator = None
    try:
        targets = workdir / "targets" / "nodes.json"
        monitor, base = swarm.start_monitor("--refresh-period", str(REFRESH_S), "--write-targets", str(targets))
        wait_for("the targets file to list 3 nodes",
                 lambda: targets.exists() and len(json.loads(targets.read_text() or "[]")) == 3, 30)  # fmt: skip
        (model,) = get_json(f"{base}/api/health")["models"]
        prometheus = Prometheus(workdir, base.removeprefix("http://"), targets)
        generator = Generator(swarm, llama_path)
        generator.start()
        # Its client forks a DHT process: no test may start a subprocess meanwhile (a fork from
        # another thread would inherit that subprocess's pipes and hang it), so wait for it.
        wait_for("the client to generate", lambda: generator.tokens > 0 or generator.errors, 120)
        yield {"swarm": swarm, "monitor": monitor, "base": base, "prometheus": prometheus, "targets": targets,
               "generator": generator, "model_id": model["model_id"]}  # fmt: skip
    finally:
        if generator is not None:
            generator.stop()
        if prometheus is not None:
            prometheus.close()
        swarm.close()


def node_metrics_url(stack, index: int) -> str:
    proc = stack["swarm"].processes[1 + index]  # 0 is the bootstrap
    return f"http://{proc.info['metrics']}/metrics"


def test_promtool_accepts_the_metrics_of_a_node_and_of_the_monitor(stack):
    promtool = need("promtool")
    for url in (node_metrics_url(stack, 0), f"{stack['base']}/metrics"):
        text = urllib.request.urlopen(url, timeout=10).read()
        out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
        assert out.returncode == 0, (url, out.stdout.decode() + out.stderr.decode())


def test_nodes_logged_their_loading_progress(stack):
    log = stack["swarm"].processes[1].log_path.read_text()  # not a terminal: a line per block, no bar
    assert "loading blocks: 3/3 (100%)" in log and "\r" not in log


def test_every_dashboard_query_returns_data_from_a_real_prometheus(stack):
    prometheus, generator, model_id = stack["prometheus"], stack["generator"], stack["model_id"]
    wait_for("the client to generate", lambda: generator.tokens >= 16, 60)
    queries = [q.replace("$model", model_id).replace("$__rate_interval", RATE_WINDOW) for q in dashboard_queries(
        dashboard())]  # fmt: skip
    assert len(queries) >= 20
    empty: list[str] = queries
    deadline = time.monotonic() + 60  # every node scraped a few times while the client generates
    while empty and time.monotonic() < deadline:
        time.sleep(1)
        empty = [q for q in queries if not prometheus.query(q)]
    assert not empty, f"queries without data: {empty}"
    # the model variable's values come from the monitor's series
    values = get_json(f"{prometheus.url}/api/v1/label/model/values?match[]=swarmnode_swarm_blocks")["data"]
    assert values == [model_id]
    up = prometheus.query('up{job="swarmnode-nodes"}')
    assert len(up) == 3 and all(r["value"][1] == "1" for r in up)
    assert {r["metric"]["model"] for r in up} == {model_id}  # labels from the targets file
    assert not generator.errors, generator.errors


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = need("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,900"):  # fmt: skip
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=need("chromedriver")), options=options)


def page_rows(browser) -> dict[str, str]:
    from selenium.webdriver.common.by import By

    return {row.get_attribute("data-peer"): row.get_attribute("data-state")
            for row in browser.find_elements(By.CSS_SELECTOR, "tr.node-row")}  # fmt: skip


def test_the_health_page_draws_the_block_map_in_a_real_browser(stack):
    from selenium.webdriver.common.by import By

    browser = chromium()
    try:
        browser.get(stack["base"] + "/")
        wait_for("the page to load", lambda: browser.find_elements(By.CSS_SELECTOR, "body[data-loaded=true]"), 30)
        (table,) = browser.find_elements(By.CSS_SELECTOR, f"table.blockmap[data-model='{stack['model_id']}']")
        rows = table.find_elements(By.CSS_SELECTOR, "tr.node-row")
        assert len(rows) == len(SPANS)
        assert len(table.find_elements(By.CSS_SELECTOR, "th.block")) == 8
        for row in rows:
            assert len(row.find_elements(By.CSS_SELECTOR, "td.block")) == 8
            assert row.get_attribute("data-state") == "ONLINE"
        served = [len(row.find_elements(By.CSS_SELECTOR, "td.block.serves")) for row in rows]
        assert served == [3, 3, 2]  # rows sorted by span: 0:3, 3:6, 6:8
        assert not browser.find_elements(By.ID, "error")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "health-page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        browser.quit()


def test_killing_a_node_shows_in_the_monitor_prometheus_and_the_page(stack):
    """The node serving 3:6 crashes: coverage drops to 5/8, one node is DEAD, a verdict appears."""
    swarm, prometheus, base = stack["swarm"], stack["prometheus"], stack["base"]
    stack["generator"].stop()  # the load is not the subject here
    victim = swarm.processes[2]
    assert victim.info["blocks"] == "3:6"
    peer = victim.info["peer_id"]
    m = f'model="{stack["model_id"]}"'

    def monitor_model() -> dict:
        return get_json(f"{base}/api/health")["models"][0]

    checks = {
        "monitor: coverage": lambda: monitor_model()["coverage"] == pytest.approx(5 / 8),
        "monitor: nodes DEAD": lambda: monitor_model()["nodes_by_state"]["DEAD"] == 1,
        "monitor: dead verdicts": lambda: monitor_model()["dead_verdicts"] >= 1,
        "targets file drops the node": lambda: peer not in stack["targets"].read_text(),
        "prometheus: coverage": lambda: prometheus.value(f"swarmnode_swarm_coverage_ratio{{{m}}}") == 5 / 8,
        "prometheus: nodes DEAD": lambda: prometheus.value(f'swarmnode_swarm_nodes{{{m},state="DEAD"}}') == 1,
        "prometheus: dead verdicts": lambda: (prometheus.value(f"swarmnode_swarm_dead_verdicts{{{m}}}") or 0) >= 1,
        "prometheus: verdicts seen": lambda: (
            (prometheus.value(f"swarmnode_swarm_dead_verdicts_seen_total{{{m}}}") or 0) >= 1
        ),  # fmt: skip
    }
    early = [name for name, check in checks.items() if check()]
    assert not early, f"shown before the kill: {early}"  # nothing shows a failure before the kill
    killed = time.monotonic()
    victim.kill_group()  # the machine dies: the node and its p2p daemon
    changed: dict[str, float] = {}
    deadline = killed + 30
    while len(changed) < len(checks) and time.monotonic() < deadline:
        for name, check in checks.items():
            if name not in changed and check():
                changed[name] = time.monotonic() - killed
        time.sleep(0.1)
    report = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in sorted(changed.items(), key=lambda kv: kv[1]))
    print(f"after the kill: {report}")
    assert set(changed) == set(checks), f"never changed: {set(checks) - set(changed)}; changed: {report}"
    # gossip detects in ~3-4 s (1 s probes, 0.4 s ping timeout, 1.5 s suspicion); +1 s refresh, +1 s scrape
    assert max(changed.values()) < 15, report

    from selenium.webdriver.common.by import By

    browser = chromium()
    try:
        browser.get(base + "/")
        wait_for("the page to load", lambda: browser.find_elements(By.CSS_SELECTOR, "body[data-loaded=true]"), 30)
        assert page_rows(browser)[peer] == "DEAD"
        gaps = browser.find_elements(By.CSS_SELECTOR, "th.block.gap")
        assert len(gaps) == 3  # blocks 3, 4, 5 highlighted
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "health-page-after-kill.png"))
    finally:
        browser.quit()


def test_the_monitor_stops_cleanly_on_sigterm(stack):
    monitor = stack["monitor"]
    began = time.monotonic()
    assert monitor.stop(timeout=20) == 0
    assert time.monotonic() - began < 15


def test_the_health_page_says_when_the_swarm_or_the_monitor_cannot_be_reached():
    from selenium.webdriver.common.by import By

    from swarmnode.monitor.service import SwarmMonitor
    from tests.test_monitor_health import dead_peer

    monitor = SwarmMonitor([dead_peer()], host="127.0.0.1", port=0, refresh_period=5.0)
    wait_for("a failed read of the swarm", lambda: monitor.health.error, 60)  # before chromium: no fork races
    browser = chromium()
    try:
        browser.get(f"http://127.0.0.1:{monitor.port}/")

        def banner() -> str:  # read in the page itself: the banner is redrawn every refresh
            return browser.execute_script("const e = document.getElementById('error'); return e ? e.textContent : '';")

        assert wait_for("the error banner", banner, 30).startswith("The swarm cannot be reached: ")
        assert not browser.find_elements(By.CSS_SELECTOR, "tr.node-row")
        monitor.close()  # now the page's own requests fail
        wait_for("the monitor-down banner", lambda: "The monitor cannot be reached" in banner(), 15)
    finally:
        browser.quit()
        monitor.close()
