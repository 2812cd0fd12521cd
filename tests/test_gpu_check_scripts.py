"""The GPU checks a session with a lent GPU runs (scripts/check_cuda.py, scripts/bench_quantization.py
--device cuda) must still work when that session comes: run here on the CPU, briefly."""

import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_the_node_path_check_runs_and_finds_the_node_equal_to_transformers():
    done = run("check_cuda.py", "--device", "cpu", "--model", "tiny-llama", "--tokens", "4",
               "--cases", "float32:none", "float32:int8", "float32:nf4")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {line.split("|")[0].strip(): line for line in done.stdout.splitlines() if line.count("|") >= 4}
    for case in ("float32:none", "float32:int8", "float32:nf4"):
        assert "16/16" in rows[case], f"{case}: the node path must generate transformers' tokens\n{done.stdout}"
    assert "same tokens*" in rows["float32:int8"] or "DIFFERENT tokens*" in rows["float32:int8"], "int8 is marked"
    assert "never batch" in done.stdout


def test_the_quantization_bench_runs_on_the_real_model(smollm2_path):
    done = run("bench_quantization.py", "--steps-per-prompt", "4", "--threads", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    formats = [line.split("|")[0].strip() for line in done.stdout.splitlines() if line.count("|") == 4]
    assert formats == ["format", "none", "int8", "nf4"], done.stdout
