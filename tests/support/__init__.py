"""What tests share, outside the product (as Faucet keeps its test library in clib/).

* ``util``: polling with a deadline (``wait_until``, ``until``) and free loopback ports.
* ``processes``: a real component process on loopback, started and stopped by PID.
* ``clc_client``: boto3 and raw signed clients for the CLC and Walrus, and a stand-in CC.
* ``probes``: a user's HTTP requests through the emulated network, and the outage they saw.
* ``fakeoftable``: executes OpenFlow flows without a switch.
* ``hademo``: the smallest HA component, to test the HA agent alone on a real network.
* ``runlogs``: the teardown check: no component logged a traceback or an internal error.
"""
