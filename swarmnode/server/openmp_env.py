"""How long a node's idle OpenMP workers spin before they sleep, set before torch loads.

After each parallel region, OpenMP keeps its worker threads spinning for a while, so that the
next region starts without waking them. libgomp (torch's runtime on Linux) spins 300,000
rounds by default: on the development machine (2 cores AMD EPYC) a worker burnt 8.7 ms of a
core after every parallel operation (CPU time during 50 ms idle right after one). In one
process that is cheap; in a swarm it lands on the next process of the chain. A node runs its
prompts on all its threads, then hands the hidden states on, and its worker spins for those
8.7 ms on one of the cores the next node's prompt needs: on SmolLM2 over 2 nodes, the second
node's prompt compute took 25-30 ms (median of 20 first tokens) against 21-25 ms for the first
node's 15 blocks, and 21-22 ms once the spin was short (docs/token_budget.md, "Ninth round").

So ``swarmnode join`` spins about a millisecond, and so do the CLI's client commands
(``generate``, ``chat``, ``api``), whose LM head runs on all threads beside nodes on a shared
machine. A program using the Python API decides for itself (docs/architecture.md).

About a millisecond is 10,000 rounds here (0.97 ms): still far longer than the gaps between
the parallel regions of one forward pass (microseconds), so a forward keeps its workers awake.
The same for LLVM's and Intel's runtimes (``KMP_BLOCKTIME``, default 200 ms), which macOS and
some builds use. These settings are read once, when the OpenMP library loads with torch, so
they must be in the environment before torch is imported; a user's own ``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT`` or ``KMP_BLOCKTIME`` is left as it is.
This module imports nothing heavy, so the CLI can call it first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

NODE_GOMP_SPINCOUNT = 10_000  # rounds: ~1 ms on the development machine (libgomp's default: 300,000)
NODE_KMP_BLOCKTIME_MS = 1  # LLVM/Intel OpenMP's equivalent, in ms (their default: 200)


def short_spin_settings(environ: MutableMapping[str, str]) -> dict[str, str]:
    """The spin settings to add to ``environ``: none of those the user already chose."""
    if "OMP_WAIT_POLICY" in environ:  # the user chose how workers wait: theirs wins
        return {}
    wanted = {"GOMP_SPINCOUNT": str(NODE_GOMP_SPINCOUNT), "KMP_BLOCKTIME": str(NODE_KMP_BLOCKTIME_MS)}
    return {name: value for name, value in wanted.items() if name not in environ}


def shorten_openmp_spin(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Make this process's OpenMP workers spin briefly when idle (see the module docstring).

    Call before torch is imported; returns the settings added (nothing if torch is already
    loaded, since the runtime has read its environment by then)."""
    if "torch" in sys.modules:
        return {}
    environ = os.environ if environ is None else environ
    added = short_spin_settings(environ)
    environ.update(added)
    return added
