"""Walrus's store: buckets, object metadata, versions, ACLs, tags and multipart uploads in
SQLite, object bytes in files named by a random id under ``objects/`` (never by their
key, so no key can escape the store). Every change is one logged operation applied in
one transaction (``Store.apply``); the op log is what HA replication ships.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

CHUNK = 1 << 16  # the unit of streamed reads and writes of object bytes


def concatenate(files: list, path: Path) -> None:
    """Write open files one after the other into ``path``, fsynced."""
    with open(path, "wb") as out:
        for f in files:
            while chunk := f.read(CHUNK * 16):
                out.write(chunk)
        out.flush()
        os.fsync(out.fileno())


class Store:
    """Buckets and object metadata in SQLite; object bytes in files."""

    def __init__(self, root: Path):
        self.objects = root / "objects"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(root / "walrus.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # see docs/ha.md, "Durability and the event loop"
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, account TEXT NOT NULL,
                                                created REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS objects (bucket TEXT NOT NULL, key TEXT NOT NULL, size INTEGER NOT NULL,
                etag TEXT NOT NULL, content_type TEXT, modified REAL NOT NULL, meta TEXT, file TEXT NOT NULL,
                PRIMARY KEY (bucket, key));
            CREATE TABLE IF NOT EXISTS ops (seq INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, op TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS uploads (id TEXT PRIMARY KEY, bucket TEXT NOT NULL, key TEXT NOT NULL,
                account TEXT NOT NULL, initiated REAL NOT NULL, content_type TEXT, meta TEXT, acl TEXT, tags TEXT);
            CREATE TABLE IF NOT EXISTS tags (bucket TEXT NOT NULL, key TEXT NOT NULL, tags TEXT NOT NULL,
                PRIMARY KEY (bucket, key));
            CREATE TABLE IF NOT EXISTS acls (bucket TEXT NOT NULL, key TEXT NOT NULL, owner TEXT NOT NULL,
                grants TEXT NOT NULL, PRIMARY KEY (bucket, key));
            CREATE TABLE IF NOT EXISTS parts (upload TEXT NOT NULL, number INTEGER NOT NULL, size INTEGER NOT NULL,
                etag TEXT NOT NULL, modified REAL NOT NULL, file TEXT NOT NULL, PRIMARY KEY (upload, number));
            CREATE TABLE IF NOT EXISTS versioning (bucket TEXT PRIMARY KEY, status TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS versions (bucket TEXT NOT NULL, key TEXT NOT NULL, vid TEXT NOT NULL,
                n INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL, content_type TEXT,
                modified REAL NOT NULL, meta TEXT, file TEXT, marker INTEGER NOT NULL,
                PRIMARY KEY (bucket, key, vid));
        """)
        self._sweep()

    @property
    def last_seq(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM ops").fetchone()[0]

    def apply(self, op: dict, seq: int | None = None, epoch: int = 1) -> list[str]:
        """Apply one logged operation in one transaction; returns the files the change made obsolete.

        The op log is what HA replication ships: a DISABLED peer applies the same ops
        (with the object and part bytes) and so holds the same buckets, objects and uploads.
        """
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        obsolete: list[str] = []
        try:
            t = op["type"]
            if t == "bucket.create":
                cur.execute("INSERT INTO buckets VALUES (?, ?, ?)", (op["bucket"], op["account"], op["created"]))
            elif t == "bucket.delete":
                cur.execute("DELETE FROM buckets WHERE name=?", (op["bucket"],))
                cur.execute("DELETE FROM versioning WHERE bucket=?", (op["bucket"],))
                cur.execute("DELETE FROM acls WHERE bucket=?", (op["bucket"],))
                cur.execute("DELETE FROM tags WHERE bucket=?", (op["bucket"],))
                for (upload,) in cur.execute("SELECT id FROM uploads WHERE bucket=?", (op["bucket"],)).fetchall():
                    obsolete += self._drop_upload(cur, upload)
            elif t == "bucket.versioning":
                if not cur.execute("SELECT 1 FROM versioning WHERE bucket=?", (op["bucket"],)).fetchone():
                    # First configured: each object so far becomes its key's "null" version.
                    cur.execute("INSERT INTO versions SELECT bucket, key, 'null', 0, size, etag, content_type, "
                                "modified, meta, file, 0 FROM objects WHERE bucket=?", (op["bucket"],))
                cur.execute("INSERT OR REPLACE INTO versioning VALUES (?, ?)", (op["bucket"], op["status"]))
            elif t in ("object.put", "upload.complete"):
                if t == "upload.complete":
                    obsolete += self._drop_upload(cur, op["upload"])
                old = cur.execute("SELECT file FROM objects WHERE bucket=? AND key=?",
                                  (op["bucket"], op["key"])).fetchone()
                cur.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (op["bucket"], op["key"], op["size"], op["etag"], op["content_type"], op["modified"],
                             json.dumps(op["meta"]), op["file"]))
                obsolete += [old[0]] if old and old[0] != op["file"] else []
                if op.get("version") is not None:
                    obsolete += self._add_version(cur, op, marker=False)
            elif t == "object.delete":
                if self.versioning(op["bucket"]) is None:  # the key is gone, and its ACL and tags with it
                    cur.execute("DELETE FROM acls WHERE bucket=? AND key=?", (op["bucket"], op["key"]))
                    cur.execute("DELETE FROM tags WHERE bucket=? AND key=?", (op["bucket"], op["key"]))
                old = cur.execute("SELECT file FROM objects WHERE bucket=? AND key=?",
                                  (op["bucket"], op["key"])).fetchone()
                obsolete += [old[0]] if old else []
                if op.get("version") is not None:  # that version, for good
                    obsolete += self._remove_version(cur, op["bucket"], op["key"], op["version"])
                    self._refresh_current(cur, op["bucket"], op["key"])
                else:
                    cur.execute("DELETE FROM objects WHERE bucket=? AND key=?", (op["bucket"], op["key"]))
                    if op.get("marker") is not None:
                        obsolete += self._add_version(cur, {**op, "version": op["marker"]}, marker=True)
            elif t == "upload.create":
                cur.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (op["upload"], op["bucket"], op["key"], op["account"], op["initiated"],
                             op["content_type"], json.dumps(op["meta"]), json.dumps(op.get("acl")),
                             json.dumps(op.get("tags", {}))))
            elif t == "upload.part":
                old = cur.execute("SELECT file FROM parts WHERE upload=? AND number=?",
                                  (op["upload"], op["number"])).fetchone()
                cur.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?, ?)",
                            (op["upload"], op["number"], op["size"], op["etag"], op["modified"], op["file"]))
                obsolete += [old[0]] if old and old[0] != op["file"] else []
            elif t == "upload.abort":
                obsolete += self._drop_upload(cur, op["upload"])
            elif t not in ("acl.put", "tags.put"):
                raise ValueError(f"unknown operation {t!r}")
            if "tags" in op and t in ("object.put", "upload.complete", "tags.put"):
                cur.execute("DELETE FROM tags WHERE bucket=? AND key=?", (op["bucket"], op["key"]))
                if op["tags"]:
                    cur.execute("INSERT INTO tags VALUES (?, ?, ?)", (op["bucket"], op["key"], json.dumps(op["tags"])))
            if op.get("acl") is not None and t in ("bucket.create", "object.put", "upload.complete", "acl.put"):
                cur.execute("INSERT OR REPLACE INTO acls VALUES (?, ?, ?, ?)",
                            (op["bucket"], op.get("key", ""), op["acl"]["owner"], json.dumps(op["acl"]["grants"])))
            # A file another row (a version, the current object) still names stays.
            obsolete = [f for f in dict.fromkeys(obsolete) if f and not cur.execute(
                "SELECT 1 FROM objects WHERE file=? UNION ALL SELECT 1 FROM versions WHERE file=? "
                "UNION ALL SELECT 1 FROM parts WHERE file=? LIMIT 1", (f, f, f)).fetchone()]
            seq = seq if seq is not None else (cur.execute("SELECT COALESCE(MAX(seq), 0) FROM ops").fetchone()[0] + 1)
            cur.execute("INSERT INTO ops VALUES (?, ?, ?)", (seq, epoch, json.dumps(op, sort_keys=True)))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        for name in obsolete:
            (self.objects / name).unlink(missing_ok=True)
        return obsolete

    @staticmethod
    def _remove_version(cur, bucket: str, key: str, vid: str) -> list[str]:
        row = cur.execute("SELECT file FROM versions WHERE bucket=? AND key=? AND vid=?", (bucket, key, vid)).fetchone()
        cur.execute("DELETE FROM versions WHERE bucket=? AND key=? AND vid=?", (bucket, key, vid))
        return [row[0]] if row and row[0] else []

    def _add_version(self, cur, op: dict, marker: bool) -> list[str]:
        """A new latest version (or delete marker) of a key in a versioned bucket; a "null"
        version replaces the key's earlier "null" one. Returns the files that replaced."""
        gone = self._remove_version(cur, op["bucket"], op["key"], op["version"])
        n = cur.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM versions").fetchone()[0]
        if marker:
            row = (0, "", None, op["modified"], None, None)
        else:
            row = (op["size"], op["etag"], op["content_type"], op["modified"], json.dumps(op["meta"]), op["file"])
        cur.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (op["bucket"], op["key"], op["version"], n, *row, int(marker)))
        return gone

    @staticmethod
    def _refresh_current(cur, bucket: str, key: str) -> None:
        """The key's current object is its latest version, unless that is a delete marker."""
        cur.execute("DELETE FROM objects WHERE bucket=? AND key=?", (bucket, key))
        cur.execute("INSERT INTO objects SELECT bucket, key, size, etag, content_type, modified, meta, file "
                    "FROM (SELECT * FROM versions WHERE bucket=? AND key=? ORDER BY n DESC LIMIT 1) "
                    "WHERE marker=0", (bucket, key))

    @staticmethod
    def _drop_upload(cur, upload: str) -> list[str]:
        """Remove a multipart upload and its parts' rows; returns the parts' files."""
        files = [row[0] for row in cur.execute("SELECT file FROM parts WHERE upload=?", (upload,))]
        cur.execute("DELETE FROM parts WHERE upload=?", (upload,))
        cur.execute("DELETE FROM uploads WHERE id=?", (upload,))
        return files

    def export_ops(self, after: int) -> list[dict]:
        return [{"seq": seq, "epoch": epoch, "op": json.loads(op)} for seq, epoch, op in
                self.db.execute("SELECT seq, epoch, op FROM ops WHERE seq > ? ORDER BY seq", (after,))]

    def reset(self) -> None:
        self.db.executescript("DELETE FROM buckets; DELETE FROM objects; DELETE FROM ops; DELETE FROM uploads; "
                              "DELETE FROM parts; DELETE FROM versioning; DELETE FROM versions; "
                              "DELETE FROM acls; DELETE FROM tags;")
        for f in self.objects.iterdir():
            f.unlink(missing_ok=True)

    def _sweep(self) -> None:
        """Remove files no metadata row points to (left by a crash mid-write)."""
        live = {row[0] for row in self.db.execute("SELECT file FROM objects UNION SELECT file FROM parts "
                                                  "UNION SELECT file FROM versions")}
        for f in self.objects.iterdir():
            if f.name not in live:
                f.unlink(missing_ok=True)

    def list(self, bucket: str, prefix: str, delimiter: str, after: str,
             max_keys: int) -> tuple[list[tuple], list[str], bool, str]:
        """One page of keys after ``after``: (contents, common prefixes, truncated, resume point).

        ``resume`` is the string the next page lists after: the last key, or a
        common prefix followed by the highest code point, so the keys it rolled up
        are skipped and a common prefix never repeats across pages.
        """
        rows = self.db.execute("SELECT key, size, etag, modified FROM objects WHERE bucket=? AND key > ? "
                               "AND key >= ? ORDER BY key", (bucket, after, prefix))
        contents: list[tuple] = []
        prefixes: list[str] = []
        resume, truncated = after, False
        for key, size, etag, modified in rows:
            if not key.startswith(prefix):
                break  # sorted: past every key under the prefix
            common = None
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[:cut + len(delimiter)]
                    if prefixes and prefixes[-1] == common:
                        continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = max_keys > 0
                break
            if common is not None:
                prefixes.append(common)
                resume = common + "\U0010ffff"
            else:
                contents.append((key, size, etag, modified))
                resume = key
        return contents, prefixes, truncated, resume

    def install(self, tmp: Path, name: str) -> None:
        """Rename a written, fsynced temporary file into place durably (the rename too)."""
        os.replace(tmp, self.objects / name)
        fd = os.open(self.objects, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def bucket(self, name: str):
        return self.db.execute("SELECT name, account, created FROM buckets WHERE name=?", (name,)).fetchone()

    def obj(self, bucket: str, key: str):
        return self.db.execute("SELECT key, size, etag, content_type, modified, meta, file FROM objects "
                               "WHERE bucket=? AND key=?", (bucket, key)).fetchone()

    def versioning(self, bucket: str) -> str | None:
        """"Enabled", "Suspended", or None for a bucket whose versioning was never configured."""
        row = self.db.execute("SELECT status FROM versioning WHERE bucket=?", (bucket,)).fetchone()
        return row[0] if row else None

    def version(self, bucket: str, key: str, vid: str | None):
        """A version as (key, size, etag, content_type, modified, meta, file, vid, marker), the
        latest when ``vid`` is None; a bucket never versioned holds only "null" versions."""
        if self.versioning(bucket) is None:
            row = self.obj(bucket, key) if vid in (None, "null") else None
            return None if row is None else (*row, "null", 0)
        if vid is None:
            return self.db.execute("SELECT key, size, etag, content_type, modified, meta, file, vid, marker "
                                   "FROM versions WHERE bucket=? AND key=? ORDER BY n DESC LIMIT 1",
                                   (bucket, key)).fetchone()
        return self.db.execute("SELECT key, size, etag, content_type, modified, meta, file, vid, marker "
                               "FROM versions WHERE bucket=? AND key=? AND vid=?", (bucket, key, vid)).fetchone()

    def tags(self, bucket: str, key: str) -> dict:
        row = self.db.execute("SELECT tags FROM tags WHERE bucket=? AND key=?", (bucket, key)).fetchone()
        return json.loads(row[0]) if row else {}

    def upload(self, bucket: str, key: str, upload: str):
        return self.db.execute("SELECT id, account, initiated, content_type, meta, acl, tags FROM uploads "
                               "WHERE id=? AND bucket=? AND key=?", (upload, bucket, key)).fetchone()

    def acl(self, bucket: str, key: str = "") -> dict:
        """The ACL of a bucket (key "") or an object: {"owner", "grants": [[kind, grantee,
        permission], ...]}; without one stored (written before ACLs), private to the bucket's owner."""
        row = self.db.execute("SELECT owner, grants FROM acls WHERE bucket=? AND key=?", (bucket, key)).fetchone()
        if row is not None:
            return {"owner": row[0], "grants": json.loads(row[1])}
        owner = self.bucket(bucket)[1]
        return {"owner": owner, "grants": [["id", owner, "FULL_CONTROL"]]}

    def parts(self, upload: str, after: int = 0) -> list[tuple]:
        return self.db.execute("SELECT number, size, etag, modified, file FROM parts WHERE upload=? AND number > ? "
                               "ORDER BY number", (upload, after)).fetchall()

    def assemble(self, files: list, name: str) -> None:
        """Concatenate open part files into the object file ``name`` (fsynced, renamed into place).

        Takes open files, so a part replaced or removed meanwhile still reads whole.
        """
        tmp = self.objects / f".{name}.part"
        try:
            concatenate(files, tmp)
            self.install(tmp, name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
