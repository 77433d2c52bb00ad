"""The CLC's state: accounts, instances, security groups, addresses, volumes, images.

Every change is a logical operation (a JSON-able dict carrying every generated
value: ids, times, addresses) applied by ``Store.apply`` in one SQLite transaction
and appended to an ordered op log (seq, epoch, op). Replaying the log on another
store rebuilds the same state, which is what HA replication ships to the peer:
``export_ops(after_seq)`` on one side, ``apply_ops(ops)`` on the other.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL,
    access_key TEXT UNIQUE NOT NULL, secret_key TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, account TEXT NOT NULL, reservation TEXT NOT NULL,
    image TEXT NOT NULL, zone TEXT NOT NULL, type TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    groups TEXT NOT NULL, private_ip TEXT, public_ip TEXT, launch_index INTEGER NOT NULL, launched REAL NOT NULL,
    key_name TEXT, nc TEXT, slot TEXT);
CREATE TABLE IF NOT EXISTS groups (id TEXT PRIMARY KEY, account TEXT NOT NULL, name TEXT NOT NULL,
    description TEXT NOT NULL, UNIQUE (account, name));
CREATE TABLE IF NOT EXISTS rules (group_id TEXT NOT NULL, protocol TEXT NOT NULL, from_port INTEGER NOT NULL,
    to_port INTEGER NOT NULL, cidr TEXT NOT NULL DEFAULT '', source_group TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (group_id, protocol, from_port, to_port, cidr, source_group));
CREATE TABLE IF NOT EXISTS addresses (public_ip TEXT PRIMARY KEY, account TEXT NOT NULL, allocation_id TEXT UNIQUE,
    instance TEXT, association_id TEXT);
CREATE TABLE IF NOT EXISTS volumes (id TEXT PRIMARY KEY, account TEXT NOT NULL, size INTEGER NOT NULL,
    zone TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, instance TEXT, device TEXT, attach_state TEXT,
    attached REAL);
CREATE TABLE IF NOT EXISTS images (id TEXT PRIMARY KEY, account TEXT NOT NULL, location TEXT NOT NULL,
    name TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS oplog (seq INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, op TEXT NOT NULL);
"""


SECRET_FIELDS = ("secret_key",)


def redact(op: dict) -> dict:
    """The op as events may show it: secrets replaced, everything else kept."""
    return {k: ("<redacted>" if k in SECRET_FIELDS else v) for k, v in op.items()}


class StoreError(Exception):
    """An operation that does not apply to the current state."""


class Store:
    def __init__(self, path: Path | str):
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # see docs/ha.md, "Durability and the event loop"
        self.db.executescript(SCHEMA)
        self.epoch = 1

    # -- the op log -------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM oplog").fetchone()[0]

    def apply(self, op: dict, seq: int | None = None, epoch: int | None = None) -> int:
        """Apply one operation atomically and log it; returns its sequence number."""
        handler = getattr(self, "_op_" + op["type"].replace(".", "_"), None)
        if handler is None:
            raise StoreError(f"unknown operation {op['type']!r}")
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            handler(cur, op)
            seq = seq if seq is not None else self.last_seq + 1
            cur.execute("INSERT INTO oplog (seq, epoch, op) VALUES (?, ?, ?)",
                        (seq, epoch if epoch is not None else self.epoch, json.dumps(op, sort_keys=True)))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return seq

    def export_ops(self, after_seq: int = 0) -> list[dict]:
        return [{"seq": r["seq"], "epoch": r["epoch"], "op": json.loads(r["op"])}
                for r in self.db.execute("SELECT seq, epoch, op FROM oplog WHERE seq > ? ORDER BY seq", (after_seq,))]

    def apply_ops(self, ops: list[dict]) -> int:
        """Replay ops from a peer, in order, skipping those already here; returns the last seq."""
        last = self.last_seq
        for entry in ops:
            if entry["seq"] <= last:
                continue
            if entry["seq"] != last + 1:
                raise StoreError(f"gap in the op log: have {last}, got {entry['seq']}")
            last = self.apply(entry["op"], seq=entry["seq"], epoch=entry["epoch"])
        return last

    # -- operations ---------------------------------------------------------------------------

    def _op_account_create(self, cur, op):
        cur.execute("INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
                    (op["id"], op["name"], op["access_key"], op["secret_key"], op["time"]))
        cur.execute("INSERT INTO groups VALUES (?, ?, 'default', 'default group')", (op["default_group"], op["id"]))

    def _op_group_create(self, cur, op):
        cur.execute("INSERT INTO groups VALUES (?, ?, ?, ?)", (op["id"], op["account"], op["name"], op["description"]))

    def _op_group_delete(self, cur, op):
        cur.execute("DELETE FROM rules WHERE group_id=?", (op["id"],))
        cur.execute("DELETE FROM groups WHERE id=?", (op["id"],))

    def _op_rules_add(self, cur, op):
        for r in op["rules"]:
            cur.execute("INSERT INTO rules VALUES (?, ?, ?, ?, ?, ?)",
                        (op["group"], r["protocol"], r["from_port"], r["to_port"], r.get("cidr", ""),
                         r.get("source_group", "")))

    def _op_rules_revoke(self, cur, op):
        for r in op["rules"]:
            cur.execute("DELETE FROM rules WHERE group_id=? AND protocol=? AND from_port=? AND to_port=? "
                        "AND cidr=? AND source_group=?", (op["group"], r["protocol"], r["from_port"],
                                                           r["to_port"], r.get("cidr", ""), r.get("source_group", "")))

    def _op_instances_create(self, cur, op):
        for i in op["instances"]:
            cur.execute("INSERT INTO instances (id, account, reservation, image, zone, type, state, groups, "
                        "launch_index, launched, key_name) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                        (i["id"], op["account"], op["reservation"], op["image"], op["zone"], op["instance_type"],
                         json.dumps(op["groups"]), i["launch_index"], op["time"], op.get("key_name")))

    def _op_instance_update(self, cur, op):
        fields = {k: op[k] for k in ("state", "reason", "private_ip", "public_ip", "nc", "slot") if k in op}
        if fields:
            cur.execute(f"UPDATE instances SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?",
                        (*fields.values(), op["id"]))

    def _op_address_allocate(self, cur, op):
        cur.execute("INSERT INTO addresses VALUES (?, ?, ?, NULL, NULL)", (op["ip"], op["account"], op["allocation_id"]))

    def _op_address_associate(self, cur, op):
        cur.execute("UPDATE instances SET public_ip=NULL WHERE public_ip=?", (op["ip"],))
        cur.execute("UPDATE addresses SET instance=?, association_id=? WHERE public_ip=?",
                    (op["instance"], op["association_id"], op["ip"]))
        cur.execute("UPDATE instances SET public_ip=? WHERE id=?", (op["ip"], op["instance"]))

    def _op_address_disassociate(self, cur, op):
        cur.execute("UPDATE instances SET public_ip=NULL WHERE public_ip=?", (op["ip"],))
        cur.execute("UPDATE addresses SET instance=NULL, association_id=NULL WHERE public_ip=?", (op["ip"],))

    def _op_address_release(self, cur, op):
        cur.execute("UPDATE instances SET public_ip=NULL WHERE public_ip=?", (op["ip"],))
        cur.execute("DELETE FROM addresses WHERE public_ip=?", (op["ip"],))

    def _op_volume_create(self, cur, op):
        cur.execute("INSERT INTO volumes (id, account, size, zone, state, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (op["id"], op["account"], op["size"], op["zone"], op["state"], op["time"]))

    def _op_volume_update(self, cur, op):
        fields = {k: op[k] for k in ("state", "instance", "device", "attach_state", "attached") if k in op}
        if fields:
            cur.execute(f"UPDATE volumes SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?",
                        (*fields.values(), op["id"]))

    def _op_volume_delete(self, cur, op):
        cur.execute("DELETE FROM volumes WHERE id=?", (op["id"],))

    def _op_image_register(self, cur, op):
        cur.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?)", (op["id"], op["account"], op["location"],
                                                                 op["name"], op["time"]))

    def reset(self) -> None:
        """Forget everything (an ex-primary rejoining takes the new primary's log whole)."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        for table in ("accounts", "instances", "groups", "rules", "addresses", "volumes", "images", "oplog"):
            cur.execute(f"DELETE FROM {table}")
        cur.execute("COMMIT")

    # -- queries ------------------------------------------------------------------------------

    def q(self, sql: str, *args) -> list[sqlite3.Row]:
        return self.db.execute(sql, args).fetchall()

    def one(self, sql: str, *args) -> sqlite3.Row | None:
        return self.db.execute(sql, args).fetchone()
