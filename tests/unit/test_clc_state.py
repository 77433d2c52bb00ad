"""The CLC's store: every change one logged operation, and a log that rebuilds the same state."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from components.clc.state import (KEEP_OPS, Compacted, Store, StoreError, redact, snapshot_from_lines,
                                  snapshot_lines)

from tests.support.processes import REPO

pytestmark = pytest.mark.loopback  # starts processes on 127.0.0.1 (tests/conftest.py)

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


# -- compaction and snapshots ----------------------------------------------------------------------

STATE = TABLES[:-1]  # what a snapshot carries: everything but the log


def state(store: Store) -> dict:
    return {t: rows for t, rows in dump(store).items() if t in STATE}


def filled(path, keep_ops: int = KEEP_OPS) -> Store:
    store = Store(path, keep_ops=keep_ops)
    for op in OPS:
        store.apply(op)
    return store


def test_compaction_keeps_the_newest_ops_and_the_position(tmp_path):
    store = filled(tmp_path / "a.db", keep_ops=3)
    assert [e["seq"] for e in store.export_ops(7)] == [8, 9, 10]
    assert store.q("SELECT COUNT(*) FROM oplog")[0][0] == 3
    assert (store.base_seq, store.last_seq) == (7, 10)
    with pytest.raises(Compacted):
        store.export_ops(6)
    store.db.close()
    again = Store(tmp_path / "a.db", keep_ops=3)
    assert (again.base_seq, again.last_seq) == (7, 10)
    assert again.apply({"type": "address.release", "ip": "10.0.128.1"}) == 11
    assert [e["seq"] for e in again.export_ops(8)] == [9, 10, 11]


def test_a_log_that_was_never_compacted_serves_every_position(tmp_path):
    store = filled(tmp_path / "a.db")
    assert store.base_seq == 0 and len(store.export_ops(0)) == len(OPS)


def test_export_batches_are_bounded_by_count_and_bytes(tmp_path):
    store = filled(tmp_path / "a.db")
    assert [e["seq"] for e in store.export_ops(2, limit=3)] == [3, 4, 5]
    sizes = [len(json.dumps(e["op"], sort_keys=True)) for e in store.export_ops()]
    assert [e["seq"] for e in store.export_ops(0, max_bytes=sizes[0] + sizes[1])] == [1, 2]
    assert [e["seq"] for e in store.export_ops(0, max_bytes=1)] == [1]  # one op always goes: progress


def test_a_snapshot_round_trip_gives_identical_tables_and_the_log_continues(tmp_path):
    a = filled(tmp_path / "a.db", keep_ops=2)
    a.epoch = 3
    a.apply({"type": "address.release", "ip": "10.0.128.1"})
    snap = snapshot_from_lines(list(snapshot_lines(a.snapshot())))
    assert (snap["last_seq"], snap["epoch"]) == (len(OPS) + 1, 3)
    b = Store(tmp_path / "b.db")
    b.apply(ACCOUNT)  # whatever it had is replaced
    assert b.install_snapshot(snap) == a.last_seq == b.last_seq == b.base_seq
    assert state(b) == state(a) and b.export_ops(b.last_seq) == []
    a.apply({"type": "volume.delete", "id": "vol-0000000a"})
    assert b.apply_ops(a.export_ops(b.last_seq)) == a.last_seq and state(b) == state(a)


def test_an_older_snapshot_changes_nothing(tmp_path):
    old = filled(tmp_path / "a.db").snapshot()
    b = filled(tmp_path / "b.db")
    b.apply({"type": "volume.delete", "id": "vol-0000000a"})
    before = dump(b)
    assert b.install_snapshot(old) == len(OPS) + 1 and dump(b) == before


def test_a_gap_after_a_snapshot_is_refused(tmp_path):
    a = filled(tmp_path / "a.db", keep_ops=1)
    b = Store(tmp_path / "b.db")
    b.install_snapshot(a.snapshot())
    before = dump(b)
    with pytest.raises(StoreError):
        b.apply_ops([{"seq": a.last_seq + 2, "epoch": 1, "op": {"type": "volume.delete", "id": "vol-0000000a"}}])
    assert dump(b) == before and b.last_seq == a.last_seq


def test_a_batch_applies_whole_or_not_at_all(tmp_path):
    a, b = filled(tmp_path / "a.db"), Store(tmp_path / "b.db")
    b.apply_ops(a.export_ops()[:5])
    before = dump(b)
    bad = a.export_ops(5) + [{"seq": len(OPS) + 1, "epoch": 1, "op": {"type": "no.such.op"}}]
    with pytest.raises(StoreError):
        b.apply_ops(bad)
    assert dump(b) == before


def test_a_bad_snapshot_leaves_the_old_state(tmp_path):
    snap = filled(tmp_path / "a.db").snapshot()
    b = Store(tmp_path / "b.db")
    b.apply(ACCOUNT)
    before = dump(b)
    broken = {**snap, "tables": {t: v for t, v in snap["tables"].items() if t != "images"}}
    with pytest.raises(KeyError):
        b.install_snapshot(broken)
    assert dump(b) == before and b.base_seq == 0


CRASH_MID_INSTALL = """
import json, os, sys
from components.clc.state import Store
loaded = []
def load_then_die(cur, table, data):
    Store._real_load(cur, table, data)
    loaded.append(table)
    if len(loaded) == 3:  # the old state deleted, three tables of the new one written
        os._exit(9)
Store._real_load, Store._load_table = Store._load_table, staticmethod(load_then_die)
Store(sys.argv[1]).install_snapshot(json.load(open(sys.argv[2])))
"""


def test_a_crash_in_the_middle_of_an_install_leaves_the_old_state(tmp_path):
    snap = filled(tmp_path / "a.db").snapshot()
    (tmp_path / "snap.json").write_text(json.dumps(snap))
    b = Store(tmp_path / "b.db")
    b.apply({**ACCOUNT, "id": "222222222222", "name": "old", "access_key": "AK2", "default_group": "sg-00000099"})
    before = dump(b)
    b.db.close()
    done = subprocess.run([sys.executable, "-c", CRASH_MID_INSTALL, str(tmp_path / "b.db"),
                           str(tmp_path / "snap.json")], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    again = Store(tmp_path / "b.db")
    assert dump(again) == before and again.last_seq == 1
    assert again.install_snapshot(snap) == len(OPS) and state(again) == state(Store(tmp_path / "a.db"))


def test_reset_forgets_the_snapshot_position_too(tmp_path):
    store = Store(tmp_path / "b.db")
    store.install_snapshot(filled(tmp_path / "a.db", keep_ops=2).snapshot())
    store.reset()
    assert (store.last_seq, store.base_seq) == (0, 0) and all(rows == [] for rows in dump(store).values())
