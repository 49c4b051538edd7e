"""The results store: one SQLite file per run folder, one row per finished grid point.

Why SQLite: a point's row is written in one transaction, so a run killed at any moment (SIGKILL
included) leaves either the whole row or nothing; WAL mode lets several runs share one store, and the
primary key on the point's hash makes a duplicate impossible. Each row carries a checksum of its result,
so a row damaged on disk is detected, dropped and its point re-run. Claims (with the owner's pid) keep two
runs on one store from computing the same point; a dead owner's claims are taken over.

The store is data: rows are parsed with ``json.loads``, never executed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import NvcimError

SCHEMA_VERSION = 1
STORE_NAME = "results.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    key TEXT PRIMARY KEY, experiment TEXT NOT NULL, params TEXT NOT NULL, method TEXT NOT NULL,
    seed INTEGER NOT NULL, config TEXT NOT NULL, result TEXT NOT NULL, checksum TEXT NOT NULL,
    code_version TEXT NOT NULL, host TEXT NOT NULL, started REAL NOT NULL, finished REAL NOT NULL,
    wall_time_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL,
    pid INTEGER NOT NULL, since REAL NOT NULL);
"""
COLUMNS = ("key", "experiment", "params", "method", "seed", "config", "result", "checksum", "code_version",
           "host", "started", "finished", "wall_time_s")


def checksum(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _os_message(e: Exception, path: Path) -> str:
    text = str(e).lower()
    if "readonly" in text or "read-only" in text or "permission" in text:
        return f"the results store {path} is read-only: make its folder writable or choose another with --out"
    if "full" in text or "no space" in text:
        return f"no space left for the results store {path}: free disk space (points already stored are kept)"
    if "unable to open" in text:
        return f"cannot open the results store {path}: check that its folder exists and is writable"
    return f"results store {path}: {e}"


def _pid_alive(pid: int, since: float) -> bool:
    """Is the run that claimed at ``since`` still alive? A pid reused by a process started after the claim
    does not count (Linux: /proc/PID's time)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_start(pid)
    return started is None or started <= since + 1.0


def _process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of a process from /proc, or None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the command name
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return None


class Store:
    """A results store file. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        p = Path(path)
        self.path = p / STORE_NAME if p.is_dir() or (not p.suffix and not p.exists()) else p
        self.readonly = readonly
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self.repaired: list[str] = []  # what was found broken and dropped at open
        if readonly and not self.path.is_file():
            raise NvcimError(f"no results store at {self.path}")
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise NvcimError(_os_message(e, self.path)) from None
            if not os.access(self.path.parent, os.W_OK):
                raise NvcimError(_os_message(PermissionError("read-only"), self.path))
        self.db = self._open()

    # ---- opening, integrity --------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        uri = f"file:{self.path}?mode=ro" if self.readonly else f"file:{self.path}"
        db = sqlite3.connect(uri, uri=True, timeout=60.0, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 60000")
        return db

    def _open(self) -> sqlite3.Connection:
        # Two runs creating one store at the same moment race on the journal-mode switch, where SQLite
        # answers "locked" at once instead of waiting: retry for a while.
        for _ in range(600):
            try:
                return self._open_once()
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise NvcimError(_os_message(e, self.path)) from None
                time.sleep(0.05 + random.random() * 0.05)
        raise NvcimError(f"the results store {self.path} stayed locked by another process for a minute")

    def _open_once(self) -> sqlite3.Connection:
        try:
            db = self._connect()
            ok = db.execute("PRAGMA quick_check").fetchall() == [("ok",)]  # fetchall: no read txn left open
            if not self.readonly:
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = FULL")
                db.executescript(_SCHEMA)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy" in str(e)):
                with contextlib.suppress(Exception):
                    db.close()
                raise
            if isinstance(e, sqlite3.OperationalError) and "malformed" not in str(e) and "not a database" not in str(e):
                raise NvcimError(_os_message(e, self.path)) from None
            ok = False
        if ok:
            if not self.readonly:
                self._drop_bad_rows(db)
            return db
        if self.readonly:
            raise NvcimError(f"the results store {self.path} is corrupted; run the experiment again to repair it")
        with contextlib.suppress(Exception):
            db.close()
        return self._salvage()

    def _drop_bad_rows(self, db: sqlite3.Connection) -> None:
        bad = [k for k, res, cs in db.execute("SELECT key, result, checksum FROM points")
               if not _row_ok(res, cs)]
        for k in bad:
            db.execute("DELETE FROM points WHERE key = ?", (k,))
        self.repaired += [f"dropped damaged point {k} (checksum mismatch): it will be re-run" for k in bad]

    def _salvage(self) -> sqlite3.Connection:
        """Move a corrupted file aside, start a fresh store, and copy over every row that still reads back
        with a valid checksum. Points whose rows are lost are simply re-run."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(aside) + suffix))
        rows: list[tuple[Any, ...]] = []
        with contextlib.suppress(sqlite3.DatabaseError):
            old = sqlite3.connect(f"file:{aside}?mode=ro", uri=True)
            try:
                n = old.execute("SELECT max(rowid) FROM points").fetchone()[0] or 0
                for rowid in range(1, n + 1):
                    with contextlib.suppress(sqlite3.DatabaseError):
                        r = old.execute(f"SELECT {', '.join(COLUMNS)} FROM points WHERE rowid = ?",
                                        (rowid,)).fetchone()
                        if r and _row_ok(r[6], r[7]):
                            rows.append(tuple(r))
            finally:
                old.close()
        db = self._connect()
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(_SCHEMA)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        with self._tx(db):
            db.executemany(f"INSERT OR IGNORE INTO points VALUES ({', '.join('?' * len(COLUMNS))})", rows)
        self.repaired.append(f"the store was corrupted: moved it to {aside.name}, kept {len(rows)} intact points; "
                             "the others will be re-run")
        return db

    @contextlib.contextmanager
    def _tx(self, db: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        db = db or self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.OperationalError as e:
            raise NvcimError(_os_message(e, self.path)) from None

    # ---- reading -------------------------------------------------------------------------------
    def done_keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM points")}

    def rows(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """Finished points as dicts, JSON fields parsed, oldest first."""
        q = f"SELECT {', '.join(COLUMNS)} FROM points"
        args: tuple[Any, ...] = ()
        if experiment:
            q, args = q + " WHERE experiment = ?", (experiment,)
        out = []
        for r in self.db.execute(q + " ORDER BY finished", args):
            d = dict(zip(COLUMNS, r))
            if not _row_ok(d["result"], d["checksum"]):
                continue
            for k in ("params", "config", "result"):
                d[k] = json.loads(d[k])
            out.append(d)
        return out

    def experiments(self) -> list[tuple[str, int]]:
        return list(self.db.execute("SELECT experiment, count(*) FROM points GROUP BY experiment"))

    # ---- claiming and writing ------------------------------------------------------------------
    def claim(self, key: str) -> bool:
        """Claim a point for this run; False if it is finished or claimed by a live run."""
        host = socket.gethostname()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM points WHERE key = ?", (key,)).fetchone():
                return False
            row = db.execute("SELECT owner, host, pid, since FROM claims WHERE key = ?", (key,)).fetchone()
            if row and row[0] != self.owner and not (row[1] == host and not _pid_alive(row[2], row[3])):
                return False
            db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                       (key, self.owner, host, os.getpid(), time.time()))
        return True

    def release(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, self.owner))

    def put(self, key: str, experiment: str, params: dict[str, Any], method: str, seed: int,
            config: dict[str, Any], result: dict[str, Any], code_version: str, started: float,
            wall_time_s: float) -> bool:
        """Write one finished point atomically (and drop its claim). False if it was already there."""
        res = json.dumps(result, sort_keys=True, allow_nan=True)
        row = (key, experiment, json.dumps(params, sort_keys=True), method, seed, json.dumps(config, sort_keys=True),
               res, checksum(res), code_version, socket.gethostname(), started, time.time(), wall_time_s)
        with self._tx() as db:
            cur = db.execute(f"INSERT OR IGNORE INTO points VALUES ({', '.join('?' * len(COLUMNS))})", row)
            db.execute("DELETE FROM claims WHERE key = ?", (key,))
        return cur.rowcount == 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.readonly:
                self.db.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))
            self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _row_ok(result: Any, cs: Any) -> bool:
    if not isinstance(result, str) or cs != checksum(result):
        return False
    try:
        json.loads(result)
    except ValueError:
        return False
    return True
