"""The CLC's state: accounts, instances, security groups, addresses, volumes, images.

Every change is a logical operation (a JSON-able dict carrying every generated
value: ids, times, addresses) applied by ``Store.apply`` in one SQLite transaction
and appended to an ordered op log (seq, epoch, op). Replaying the log on another
store rebuilds the same state, which is what HA replication ships to the peer:
``export_ops(after_seq)`` on one side, ``apply_ops(ops)`` on the other.

The log keeps only its newest ``keep_ops`` ops (raft's log compaction): the state
tables already hold everything older, and the newest op folded away is the log's
``base_seq``. A peer whose position is older than that cannot be sent ops; it gets a
``snapshot()`` of the tables at one position instead (``install_snapshot`` on its
side, in one transaction), then the ops after it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL,
    access_key TEXT UNIQUE NOT NULL, secret_key TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS instances (id TEXT PRIMARY KEY, account TEXT NOT NULL, reservation TEXT NOT NULL,
    image TEXT NOT NULL, zone TEXT NOT NULL, type TEXT NOT NULL, state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',
    groups TEXT NOT NULL, private_ip TEXT, public_ip TEXT, launch_index INTEGER NOT NULL, launched REAL NOT NULL,
    key_name TEXT, nc TEXT, slot TEXT, ended REAL, user_data TEXT);
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
    name TEXT NOT NULL, created REAL NOT NULL, public INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS instances_state ON instances (state, zone);
CREATE INDEX IF NOT EXISTS instances_account ON instances (account, launched, launch_index);
CREATE INDEX IF NOT EXISTS instances_private_ip ON instances (private_ip);
CREATE INDEX IF NOT EXISTS instances_ended ON instances (ended) WHERE state = 'terminated';
CREATE INDEX IF NOT EXISTS addresses_instance ON addresses (instance);
CREATE INDEX IF NOT EXISTS addresses_account ON addresses (account);
CREATE INDEX IF NOT EXISTS volumes_account ON volumes (account);
CREATE INDEX IF NOT EXISTS volumes_instance ON volumes (instance);
CREATE INDEX IF NOT EXISTS rules_source ON rules (source_group);
CREATE TABLE IF NOT EXISTS oplog (seq INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, op TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('base_seq', 0), ('base_epoch', 0);
"""
# What a snapshot carries and a reset clears: the state, without the log and its bookkeeping.
STATE_TABLES = ("accounts", "instances", "groups", "rules", "addresses", "volumes", "images")
# Default of config ``oplog_keep``. A peer less than this far behind catches up from the
# log; one further behind gets a snapshot. Measured here (docs/ha.md, "CLC replication"), an op
# takes ~0.2 KB of database and replays in ~15 us in a batch, so 10,000 ops are ~2 MB of
# log and a 0.15 s replay: more than a restart or a cut in the testbed's experiments
# leaves a peer behind (hundreds of ops), and less than a cloud's state once it is big
# enough for the log to matter (17,000 instances: a 3 MB snapshot).
KEEP_OPS = 10_000
# Rows per line of an encoded snapshot (snapshot_lines). json encodes or decodes a whole
# document in one C call that holds the GIL even in a worker thread (a 3 MB snapshot: 30
# ms of the event loop on either side, measured here), so a snapshot travels as lines
# that each take about a millisecond.
SNAPSHOT_LINE_ROWS = 500


SECRET_FIELDS = ("secret_key",)


def snapshot_lines(snap: dict) -> Iterator[str]:
    """A snapshot as JSON lines: its position, then ``[table, columns, rows]`` with at most
    SNAPSHOT_LINE_ROWS rows each (every table at least once, even empty)."""
    yield json.dumps({"last_seq": snap["last_seq"], "epoch": snap["epoch"]})
    for table, data in snap["tables"].items():
        rows = data["rows"]
        for i in range(0, max(len(rows), 1), SNAPSHOT_LINE_ROWS):
            yield json.dumps([table, data["columns"], rows[i:i + SNAPSHOT_LINE_ROWS]])


def snapshot_from_lines(lines: Iterable[str | bytes]) -> dict:
    """The snapshot that ``snapshot_lines`` encoded."""
    it = iter(lines)
    snap = json.loads(next(it))
    snap["tables"] = {}
    for line in it:
        table, columns, rows = json.loads(line)
        snap["tables"].setdefault(table, {"columns": columns, "rows": []})["rows"].extend(rows)
    return snap


def redact(op: dict) -> dict:
    """The op as events may show it: secrets replaced, everything else kept."""
    return {k: ("<redacted>" if k in SECRET_FIELDS else v) for k, v in op.items()}


@contextlib.contextmanager
def _writing(db: sqlite3.Connection) -> Iterator[sqlite3.Cursor]:
    """One write transaction on ``db``: committed whole, or rolled back on any exception."""
    cur = db.cursor()
    cur.execute("BEGIN IMMEDIATE")
    try:
        yield cur
        cur.execute("COMMIT")
    except BaseException:
        cur.execute("ROLLBACK")
        raise


class StoreError(Exception):
    """An operation that does not apply to the current state."""


class Compacted(StoreError):
    """Ops asked for that the log no longer holds: the asker needs a snapshot."""


BASE_SEQ = "SELECT value FROM meta WHERE key='base_seq'"
LAST_SEQ = f"SELECT COALESCE(MAX(seq), ({BASE_SEQ})) FROM oplog"


class Store:
    """The CLC's database.

    ``db`` is the connection of the event loop (the API's reads and writes). What a
    DISABLED member receives from its peer (``apply_ops``, ``install_snapshot``) and
    ``snapshot`` may run in a worker thread instead, each on a connection of its own: a
    connection's open transaction is visible to everything using it, and WAL lets the
    loop's connection read the last committed state meanwhile (a heartbeat never
    advertises a position that is not committed). The caller runs at most one writer at
    a time (the CLC's replica lock).
    """

    def __init__(self, path: Path | str, keep_ops: int = KEEP_OPS):
        if keep_ops < 1:
            raise ValueError(f"oplog_keep: at least 1 op must stay in the log, not {keep_ops}")
        self.path = str(path)
        self.keep_ops = keep_ops
        self.db = self._connect()
        self.db.executescript(SCHEMA)
        self.epoch = 1
        self._replica_db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # see docs/ha.md, "Durability and the event loop"
        return db

    def _replica(self) -> sqlite3.Connection:
        """The connection for what the peer sends (opened on first use; any one thread at a time)."""
        if self._replica_db is None:
            self._replica_db = self._connect()
        return self._replica_db

    # -- the op log -------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The position of the state: the newest op applied, logged or folded into a snapshot."""
        return self.db.execute(LAST_SEQ).fetchone()[0]

    @property
    def base_seq(self) -> int:
        """The newest op no longer in the log: ``export_ops`` serves positions from here on."""
        return self.db.execute(BASE_SEQ).fetchone()[0]

    def apply(self, op: dict, seq: int | None = None, epoch: int | None = None) -> int:
        """Apply one operation atomically and log it; returns its sequence number."""
        with _writing(self.db) as cur:
            seq = self._apply_one(cur, op, seq if seq is not None else cur.execute(LAST_SEQ).fetchone()[0] + 1,
                                  epoch if epoch is not None else self.epoch)
            self._compact(cur, seq)
        return seq

    def _apply_one(self, cur: sqlite3.Cursor, op: dict, seq: int, epoch: int) -> int:
        handler = getattr(self, "_op_" + op["type"].replace(".", "_"), None)
        if handler is None:
            raise StoreError(f"unknown operation {op['type']!r}")
        handler(cur, op)
        cur.execute("INSERT INTO oplog (seq, epoch, op) VALUES (?, ?, ?)", (seq, epoch, json.dumps(op, sort_keys=True)))
        return seq

    def _compact(self, cur: sqlite3.Cursor, last: int) -> None:
        """Fold the ops older than the newest ``keep_ops`` away (in the writer's transaction)."""
        cut = last - self.keep_ops
        if cut <= cur.execute(BASE_SEQ).fetchone()[0]:
            return
        row = cur.execute("SELECT epoch FROM oplog WHERE seq=?", (cut,)).fetchone()
        cur.execute("DELETE FROM oplog WHERE seq <= ?", (cut,))
        cur.execute("UPDATE meta SET value=? WHERE key='base_seq'", (cut,))
        if row is not None:
            cur.execute("UPDATE meta SET value=? WHERE key='base_epoch'", (row[0],))

    def export_ops(self, after_seq: int = 0, limit: int | None = None, max_bytes: int | None = None) -> list[dict]:
        """The logged ops after ``after_seq``, in order: at most ``limit`` of them and, past the
        first, no more than ``max_bytes`` of op text. Raises Compacted when ops after
        ``after_seq`` are no longer in the log."""
        ops, size = [], 0
        cur = self.db.cursor()
        cur.execute("BEGIN")  # the base and the ops read from one state of the log
        try:
            base = cur.execute(BASE_SEQ).fetchone()[0]
            if after_seq < base:
                raise Compacted(f"ops after {after_seq} are compacted away (the log starts after {base})")
            rows = cur.execute("SELECT seq, epoch, op FROM oplog WHERE seq > ? ORDER BY seq LIMIT ?",
                               (after_seq, -1 if limit is None else limit))
            for r in rows:
                size += len(r["op"])
                if ops and max_bytes is not None and size > max_bytes:
                    break
                ops.append({"seq": r["seq"], "epoch": r["epoch"], "op": json.loads(r["op"])})
        finally:
            cur.execute("COMMIT")
        return ops

    def apply_ops(self, ops: list[dict]) -> int:
        """Replay ops from a peer, in order, skipping those already here; returns the last seq.

        One transaction on the replica connection (callable from a worker thread): the
        batch is applied whole or not at all. A gap is refused (StoreError)."""
        with _writing(self._replica()) as cur:
            last = first = cur.execute(LAST_SEQ).fetchone()[0]
            for entry in ops:
                if entry["seq"] <= last:
                    continue
                if entry["seq"] != last + 1:
                    raise StoreError(f"gap in the op log: have {last}, got {entry['seq']}")
                last = self._apply_one(cur, entry["op"], entry["seq"], entry["epoch"])
            if last > first:
                self._compact(cur, last)
        return last

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """The state tables at one position, with that position (``last_seq``) and the epoch of
        its op: read in one transaction on a connection of its own (callable from a worker
        thread; WAL keeps writers going meanwhile)."""
        db = self._connect()
        try:
            db.execute("BEGIN")
            last = db.execute(LAST_SEQ).fetchone()[0]
            row = db.execute("SELECT epoch FROM oplog WHERE seq=?", (last,)).fetchone()
            epoch = row[0] if row else db.execute("SELECT value FROM meta WHERE key='base_epoch'").fetchone()[0]
            tables = {}
            for table in STATE_TABLES:
                cur = db.execute(f"SELECT * FROM {table}")
                tables[table] = {"columns": [d[0] for d in cur.description], "rows": [list(r) for r in cur]}
            db.execute("COMMIT")
        finally:
            db.close()
        return {"last_seq": last, "epoch": epoch, "tables": tables}

    def install_snapshot(self, snap: dict) -> int:
        """Replace the state with a peer's snapshot, in one transaction (a crash leaves the old
        state or the new one, never a mix); the log starts after it. A snapshot no newer
        than this state changes nothing. Returns the position."""
        with _writing(self._replica()) as cur:
            last = cur.execute(LAST_SEQ).fetchone()[0]
            if int(snap["last_seq"]) > last:
                for table in (*STATE_TABLES, "oplog"):
                    cur.execute(f"DELETE FROM {table}")
                for table in STATE_TABLES:
                    self._load_table(cur, table, snap["tables"][table])
                last = int(snap["last_seq"])
                cur.execute("UPDATE meta SET value=? WHERE key='base_seq'", (last,))
                cur.execute("UPDATE meta SET value=? WHERE key='base_epoch'", (int(snap["epoch"]),))
        return last

    @staticmethod
    def _load_table(cur: sqlite3.Cursor, table: str, data: dict) -> None:
        columns = data["columns"]
        if not columns or not all(c.isidentifier() for c in columns):
            raise StoreError(f"snapshot: bad columns for {table}: {columns!r}")
        cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                        data["rows"])

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
                        "launch_index, launched, key_name, user_data) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                        (i["id"], op["account"], op["reservation"], op["image"], op["zone"], op["instance_type"],
                         json.dumps(op["groups"]), i["launch_index"], op["time"], op.get("key_name"),
                         op.get("user_data")))

    def _op_instance_update(self, cur, op):
        fields = {k: op[k] for k in ("state", "reason", "private_ip", "public_ip", "nc", "slot") if k in op}
        if fields:
            cur.execute(f"UPDATE instances SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?",
                        (*fields.values(), op["id"]))
        if op.get("state") == "terminated" and op.get("time") is not None:
            cur.execute("UPDATE instances SET ended=COALESCE(ended, ?) WHERE id=?", (op["time"], op["id"]))

    def _op_instances_retire(self, cur, op):
        """Forget terminated instances (their retention is over); a live one is kept."""
        cur.executemany("DELETE FROM instances WHERE id=? AND state='terminated'", [(i,) for i in op["ids"]])

    def _op_address_allocate(self, cur, op):
        cur.execute("INSERT INTO addresses VALUES (?, ?, ?, NULL, NULL)", (op["ip"], op["account"], op["allocation_id"]))

    def _op_address_associate(self, cur, op):
        # An instance has one public address: the one it had before is disassociated (EC2
        # does the same for an instance's primary private address).
        cur.execute("UPDATE addresses SET instance=NULL, association_id=NULL WHERE instance=? AND public_ip!=?",
                    (op["instance"], op["ip"]))
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
        cur.execute("INSERT INTO images (id, account, location, name, created) VALUES (?, ?, ?, ?, ?)",
                    (op["id"], op["account"], op["location"], op["name"], op["time"]))

    def _op_image_launch_permission(self, cur, op):
        cur.execute("UPDATE images SET public=? WHERE id=?", (1 if op["public"] else 0, op["id"]))

    def reset(self) -> None:
        """Forget everything (an ex-primary rejoining takes the new primary's state whole)."""
        with _writing(self.db) as cur:
            for table in (*STATE_TABLES, "oplog"):
                cur.execute(f"DELETE FROM {table}")
            cur.execute("UPDATE meta SET value=0")

    # -- queries ------------------------------------------------------------------------------

    def q(self, sql: str, *args) -> list[sqlite3.Row]:
        return self.db.execute(sql, args).fetchall()

    def one(self, sql: str, *args) -> sqlite3.Row | None:
        return self.db.execute(sql, args).fetchone()
