"""The operator's files in monitoring/ and the Dockerfile: the dashboard is generated and up to
date, its panels are complete and use the provisioned datasource, and the Dockerfile passes
hadolint and runs as a non-root user with a health check."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
DASHBOARD = MONITORING / "dashboards" / "swarm-health.json"


def load_builder():
    spec = importlib.util.spec_from_file_location("build_dashboard", ROOT / "scripts" / "build_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def data_panels(d: dict) -> list[dict]:
    return [p for p in d["panels"] if p["type"] != "row"]


def dashboard_queries(d: dict) -> list[str]:
    """Every PromQL expression of every panel."""
    return [t["expr"] for p in data_panels(d) for t in p["targets"]]


def test_the_checked_in_dashboard_is_what_the_builder_makes():
    assert DASHBOARD.read_text() == load_builder().render(), "run `make dashboard`"
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_dashboard.py"), "--check"])
    assert check.returncode == 0


def test_panels_have_unique_ids_titles_descriptions_and_units():
    d = dashboard()
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    panels = data_panels(d)
    assert len(panels) >= 15
    for p in panels:
        assert p.get("title"), p
        assert p.get("description"), p["title"]
        assert p.get("fieldConfig", {}).get("defaults", {}).get("unit"), p["title"]
        assert p["targets"], p["title"]


def test_every_query_uses_the_provisioned_datasource_and_the_model_variable():
    provisioned = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = provisioned["datasources"]
    uid = source["uid"]
    d = dashboard()
    for p in data_panels(d):
        assert p["datasource"]["uid"] == uid, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
    (variable,) = d["templating"]["list"]
    assert variable["name"] == "model" and variable["datasource"]["uid"] == uid
    # every query but the monitor's own liveness is about one model
    assert all('model="$model"' in q for q in dashboard_queries(d) if "swarmnode_swarm_up" not in q)
    names = {"Coverage", "Replicas per block", "Nodes by state", "Swarm tokens/s", "Decode step latency p50 / p95",
             "Errors by class", "Sessions active", "KV-cache use", "Dead verdicts and suspicions"}  # fmt: skip
    assert names <= {p["title"] for p in data_panels(d)}


def test_provisioning_and_compose_agree_on_paths():
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/swarmbee.yml").read_text())
    compose = yaml.safe_load((MONITORING / "docker-compose.yml").read_text())
    grafana_volumes = compose["services"]["grafana"]["volumes"]
    assert f"./dashboards:{provider['providers'][0]['options']['path']}:ro" in grafana_volumes
    prometheus = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    (sd,) = jobs["swarmnode-nodes"]["file_sd_configs"]
    targets_mount = next(v for v in compose["services"]["prometheus"]["volumes"] if v.startswith("targets:"))
    assert sd["files"][0].startswith(targets_mount.split(":")[1] + "/")
    assert "--write-targets" in compose["services"]["monitor"]["command"]


def test_promtool_accepts_the_prometheus_config():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make system-packages` installs Debian's prometheus"
    out = subprocess.run([promtool, "check", "config", str(MONITORING / "prometheus.yml")], capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_passes_hadolint_and_runs_unprivileged_with_a_health_check():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*readyz", text, re.M)
    exposed = set(re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split())
    assert {"9156", "9157"} <= exposed
    assert re.search(r'^VOLUME \["/data"\]', text, re.M) and "SWARMNODE_CACHE=/data" in text
