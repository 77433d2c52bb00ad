"""The CLC's store: every change one logged operation, and a log that rebuilds the same state."""

from __future__ import annotations

import sqlite3

import pytest

from components.clc.state import Store, StoreError, redact

ACCOUNT = {"type": "account.create", "id": "111111111111", "name": "x", "access_key": "AK", "secret_key": "s",
           "time": 1.0, "default_group": "sg-00000001"}
OPS = [
    ACCOUNT,
    {"type": "group.create", "id": "sg-00000002", "account": "111111111111", "name": "web", "description": "d"},
    {"type": "rules.add", "group": "sg-00000002",
     "rules": [{"protocol": "tcp", "from_port": 1, "to_port": 2, "cidr": "0.0.0.0/0", "source_group": ""}]},
    {"type": "image.register", "id": "emi-0000000a", "account": "111111111111", "location": "b/k", "name": "k",
     "time": 1.0},
    {"type": "instances.create", "account": "111111111111", "reservation": "r-0000000a", "image": "emi-0000000a",
     "zone": "cluster1", "instance_type": "m1.small", "groups": ["sg-00000002"], "time": 2.0, "key_name": None,
     "instances": [{"id": "i-0000000a", "launch_index": 0}]},
    {"type": "instance.update", "id": "i-0000000a", "state": "running", "private_ip": "10.1.0.5"},
    {"type": "address.allocate", "ip": "10.0.128.1", "account": "111111111111", "allocation_id": "eipalloc-0000000a"},
    {"type": "address.associate", "ip": "10.0.128.1", "instance": "i-0000000a", "association_id": "eipassoc-0000000a"},
    {"type": "volume.create", "id": "vol-0000000a", "account": "111111111111", "size": 1, "zone": "cluster1",
     "state": "available", "time": 3.0},
    {"type": "volume.update", "id": "vol-0000000a", "state": "in-use", "instance": "i-0000000a", "device": "/dev/vdb",
     "attach_state": "attached", "attached": 4.0},
]
TABLES = ("accounts", "instances", "groups", "rules", "addresses", "volumes", "images", "oplog")


def dump(store: Store) -> dict:
    return {t: [tuple(r) for r in store.q(f"SELECT * FROM {t} ORDER BY 1")] for t in TABLES}


def test_each_operation_is_logged_in_order(tmp_path):
    store = Store(tmp_path / "a.db")
    assert [store.apply(op) for op in OPS] == list(range(1, len(OPS) + 1))
    log = store.export_ops()
    assert [e["op"] for e in log] == OPS and {e["epoch"] for e in log} == {1}
    assert store.export_ops(after_seq=8) == log[8:]
    inst = store.one("SELECT * FROM instances")
    assert (inst["state"], inst["public_ip"]) == ("running", "10.0.128.1")


def test_replay_builds_the_same_state_and_is_idempotent(tmp_path):
    a, b = Store(tmp_path / "a.db"), Store(tmp_path / "b.db")
    for op in OPS:
        a.apply(op)
    a.epoch = 2
    a.apply({"type": "address.release", "ip": "10.0.128.1"})
    assert b.apply_ops(a.export_ops()[:4]) == 4  # in two parts, as replication does
    assert b.apply_ops(a.export_ops()) == len(OPS) + 1
    assert dump(a) == dump(b)
    assert b.apply_ops(a.export_ops()) == len(OPS) + 1 and dump(a) == dump(b)
    assert b.export_ops()[-1]["epoch"] == 2


def test_a_gap_is_refused(tmp_path):
    a = Store(tmp_path / "a.db")
    a.apply(ACCOUNT)
    with pytest.raises(StoreError):
        a.apply_ops([{"seq": 9, "epoch": 1, "op": {"type": "group.delete", "id": "sg-00000001"}}])
    assert a.last_seq == 1


def test_a_failing_operation_changes_nothing(tmp_path):
    store = Store(tmp_path / "a.db")
    store.apply(ACCOUNT)
    before = dump(store)
    with pytest.raises(sqlite3.IntegrityError):  # the same account twice: the second insert fails
        store.apply(ACCOUNT)
    with pytest.raises(StoreError):
        store.apply({"type": "no.such.op"})
    with pytest.raises(KeyError):  # an op missing a field
        store.apply({"type": "group.create", "id": "sg-00000009"})
    assert dump(store) == before


def test_state_survives_a_restart(tmp_path):
    store = Store(tmp_path / "a.db")
    for op in OPS:
        store.apply(op)
    before = dump(store)
    store.db.close()
    assert dump(Store(tmp_path / "a.db")) == before


def test_reset_forgets_everything(tmp_path):
    store = Store(tmp_path / "a.db")
    for op in OPS:
        store.apply(op)
    store.reset()
    assert all(rows == [] for rows in dump(store).values()) and store.last_seq == 0


def test_redact_hides_secrets_only():
    shown = redact(ACCOUNT)
    assert shown["secret_key"] == "<redacted>" and shown["access_key"] == "AK" and ACCOUNT["secret_key"] == "s"
