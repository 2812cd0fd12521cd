"""server/openmp_env.py: a node's idle OpenMP workers spin about a millisecond, not the runtime's
default (8.7 ms of a core after every parallel operation on the development machine), and a
user's own OpenMP settings win."""

import os
import subprocess
import sys

from swarmnode.server.openmp_env import NODE_GOMP_SPINCOUNT, short_spin_settings, shorten_openmp_spin

# CPU time a process burns in 50 ms of idling right after a 2-thread matmul: its OpenMP
# worker's spin. Run in a fresh interpreter, since OpenMP reads its settings when torch loads.
SPIN_PROBE = """
import sys, time
{setup}
import torch
torch.set_num_threads(2)
a = torch.randn(512, 512)
burnt = []
for _ in range(15):
    a @ a
    began = time.process_time()
    time.sleep(0.05)
    burnt.append(1000 * (time.process_time() - began))
print(torch.get_num_threads(), sorted(burnt)[len(burnt) // 2])
"""

JOIN_PROBE = """
import os, sys
seen = []
class WatchTorch:  # notes the OpenMP setting at the moment torch is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("GOMP_SPINCOUNT"))
sys.meta_path.insert(0, WatchTorch())
import swarmnode.config
def stop(*args, **kwargs):  # cmd_join has loaded the node's code (torch included) by now
    print(seen)
    sys.exit(0)
swarmnode.config.load_config = stop
from swarmnode import cli
cli.main(["join", "--model", "unused"])
"""


def run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    result = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout.split("\n")[-2]


def test_the_settings_added_leave_what_the_user_chose():
    assert short_spin_settings({}) == {"GOMP_SPINCOUNT": str(NODE_GOMP_SPINCOUNT), "KMP_BLOCKTIME": "1"}
    assert short_spin_settings({"GOMP_SPINCOUNT": "300000"}) == {"KMP_BLOCKTIME": "1"}
    assert short_spin_settings({"OMP_WAIT_POLICY": "ACTIVE"}) == {}


def test_nothing_is_set_once_torch_is_loaded():
    environ: dict[str, str] = {}
    assert "torch" in sys.modules  # this test process loaded it (the package's tests import it)
    assert shorten_openmp_spin(environ) == {} and environ == {}


def test_a_node_process_spins_briefly_after_parallel_work():
    setup = "from swarmnode.server.openmp_env import shorten_openmp_spin; shorten_openmp_spin()"
    threads, burnt_ms = run_python(SPIN_PROBE.format(setup=setup)).split()
    assert int(threads) == 2, "the probe needs a 2-thread team to have a spinning worker"
    # ~1 ms here with the setting, ~8.7 ms without it (libgomp's 300,000 rounds)
    assert float(burnt_ms) < 4.0, f"an idle worker still burnt {burnt_ms} ms of CPU in 50 ms"


def test_swarmnode_join_sets_the_spin_before_torch_loads_and_keeps_a_users_choice():
    assert run_python(JOIN_PROBE) == repr([str(NODE_GOMP_SPINCOUNT)])
    assert run_python(JOIN_PROBE, GOMP_SPINCOUNT="5000") == repr(["5000"])
