"""Deployment.listening's reading of /proc/net/tcp and tcp6 (no root)."""

from __future__ import annotations

from experiments.testbed.deployment import listens

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000
   1: 0B00000A:C350 1500000A:1451 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000000000000:1451 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00
"""


def test_ipv4_and_ipv6_listeners_count_and_connections_do_not():
    assert listens(TCP, 8080)
    assert not listens(TCP, 5201)  # only a connection to 5201 elsewhere (remote end)
    assert not listens(TCP, 50000)  # a connection's local port, not listening
    assert listens(TCP + TCP6, 5201)  # iperf3: [::]:5201
    assert not listens(TCP6, 8080)
