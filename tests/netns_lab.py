"""Network namespaces for tests: a client, a relay, and a node behind a real NAT. Not a test module.

    client ns A (5.77.1.2) ── R (5.77.1.1 | 5.77.2.1) ── (5.77.2.2) NAT gateway G ── B (192.168.77.2)

R does not forward, so A and the NAT's outside cannot reach each other except through peers
in R; G masquerades B's outgoing connections (nftables) and forwards nothing inwards, so B can
dial out but nobody can dial B — as at home behind a router. Namespaces (and with them their
interfaces and rules) are deleted on close.
"""

from __future__ import annotations

import os
import subprocess

# Outside the NAT, addresses that look public, as a relay's are: libp2p announces relayed
# addresses only through a relay with a public address (these namespaces reach nothing else).
ADDR = {"client": "5.77.1.2", "relay_to_client": "5.77.1.1", "relay_to_nat": "5.77.2.1", "nat_outside": "5.77.2.2",
        "nat_inside": "192.168.77.1", "node": "192.168.77.2"}  # fmt: skip


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class NatLab:
    """The namespaces above; ``ns[role]`` names them (roles: client, relay, nat, node)."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.ns = {
            role: f"sb{tag}{letter}" for role, letter in (("client", "c"), ("relay", "r"), ("nat", "g"), ("node", "b"))
        }
        self._tag = tag

    def __enter__(self) -> NatLab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _link(self, a: str, a_addr: str, b: str, b_addr: str, name: str) -> None:
        left, right = f"v{self._tag}{name}0", f"v{self._tag}{name}1"
        _ip("link", "add", left, "type", "veth", "peer", "name", right)
        _ip("link", "set", left, "netns", self.ns[a])
        _ip("link", "set", right, "netns", self.ns[b])
        _ip("-n", self.ns[a], "addr", "add", a_addr, "dev", left)
        _ip("-n", self.ns[b], "addr", "add", b_addr, "dev", right)
        _ip("-n", self.ns[a], "link", "set", left, "up")
        _ip("-n", self.ns[b], "link", "set", right, "up")
        self.iface = getattr(self, "iface", {}) | {(a, b): left, (b, a): right}

    def _build(self) -> None:
        for ns in self.ns.values():
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        self._link("client", f"{ADDR['client']}/24", "relay", f"{ADDR['relay_to_client']}/24", "a")
        self._link("nat", f"{ADDR['nat_outside']}/24", "relay", f"{ADDR['relay_to_nat']}/24", "g")
        self._link("node", f"{ADDR['node']}/24", "nat", f"{ADDR['nat_inside']}/24", "b")
        _ip("-n", self.ns["node"], "route", "add", "default", "via", ADDR["nat_inside"])
        self.run("nat", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        outside = self.iface[("nat", "relay")]
        rules = "\n".join(
            ["table ip nat {", " chain post {", "  type nat hook postrouting priority 100;",
             f'  oifname "{outside}" masquerade', " }", "}", ""]
        )  # fmt: skip
        subprocess.run(["ip", "netns", "exec", self.ns["nat"], "nft", "-f", "-"], input=rules, check=True, text=True)

    def run(self, role: str, *cmd: str, **kwargs) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside ``role``'s namespace (output captured; RuntimeError with it if it fails)."""
        done = subprocess.run(["ip", "netns", "exec", self.ns[role], *cmd], capture_output=True, text=True, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} in {role} exited with {done.returncode}:\n{done.stderr[-6000:]}")
        return done

    def close(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
