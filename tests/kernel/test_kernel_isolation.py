"""MANAGED isolation on the Open vSwitch kernel datapath.

The SDN controller's flows are the same whatever the datapath; this module runs the
userspace datapath's MANAGED tests (tests/integration/test_sdn_managed.py: the
isolation matrix both ways, ARP poisoning, IP and MAC spoofing, double-tagged frames,
broadcast sniffing, the CC's routed path, fail-secure switches) again on the kernel
datapath, after checking that the deployment is on it and that every switch holds the
flows the controller computes.
"""

from __future__ import annotations

import subprocess

from controllers.flows import compute_flows
from controllers.topology import Topology


def test_on_the_kernel_datapath_with_the_computed_flows(dep):
    assert dep.network.datapath == "kernel"
    assert "system@ovs-system" in subprocess.run(["ovs-dpctl", "show"], capture_output=True, text=True).stdout
    topo = Topology.load(dep.run_dir / "topology.json")
    wanted = compute_flows(topo, {1: cluster_intent()})
    for br in dep.plan.switches:
        dump = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", br], capture_output=True,
                              text=True, check=True).stdout
        assert dump.count("cookie=") == len(wanted[br]), (br, dump)


# The same tests as on the userspace datapath, collected here after the check above.
from tests.integration.test_sdn_managed import *  # noqa: E402,F401,F403
from tests.integration.test_sdn_managed import cluster_intent  # noqa: E402
# Connection tracking in the CC members' namespaces, the same whatever the datapath: the
# userspace lane's run of it is enough, and the emulated VM's time is short.
from tests.integration.test_sdn_managed import (  # noqa: E402
    test_a_connection_opened_through_the_peer_survives_the_router_coming_back as conntrack_test)
del globals()[conntrack_test.__name__], conntrack_test
