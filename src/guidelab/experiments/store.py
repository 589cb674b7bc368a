"""The results store: one SQLite row per finished run, written in one transaction.

Why SQLite: it ships with Python, a committed transaction survives ``kill -9`` (the journal rolls back a
half-written one), the primary key on the configuration hash makes a rerun replace rather than duplicate,
and pandas reads it directly (``pandas.read_sql``). Parquet would need a file per run or a rewrite per
row to stay atomic; DuckDB adds a dependency for no gain at this size. Only the sweep's main process
writes, so there is never write contention.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["ResultStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    hash TEXT PRIMARY KEY,
    sweep TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'error')),
    error TEXT,
    target TEXT, cond TEXT, path TEXT, grid TEXT, steps INTEGER, solver TEXT,
    guider TEXT, label TEXT, seed INTEGER, n INTEGER,
    gamma REAL,
    nfe INTEGER, diverged INTEGER, wall_time_s REAL,
    guider_config TEXT NOT NULL,
    schedule TEXT NOT NULL,
    metrics TEXT NOT NULL,
    config TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    finished_at TEXT NOT NULL DEFAULT (datetime('now'))
)
"""
_COLUMNS = (
    "hash",
    "sweep",
    "status",
    "error",
    "target",
    "cond",
    "path",
    "grid",
    "steps",
    "solver",
    "guider",
    "label",
    "seed",
    "n",
    "gamma",
    "nfe",
    "diverged",
    "wall_time_s",
    "guider_config",
    "schedule",
    "metrics",
    "config",
)
_JSON_COLUMNS = ("guider_config", "schedule", "metrics", "config")


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store of an earlier layout to the present one, in the caller's transaction; no row is lost."""
    _migrate_params(db)
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    if columns and "attempts" not in columns:  # written before attempts were counted: each row is one attempt
        db.execute("ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1")


def _migrate_params(db: sqlite3.Connection) -> None:
    """Bring a store written before the resolved guider configuration (a ``params`` column holding the sweep's
    flat parameters) to the present layout, in the caller's transaction: the guider is kept as its flat
    configuration ``{name, **params}`` (which :func:`~guidelab.guiders.build_guider` reads), γ as its
    ``scale`` parameter where that was a number, the schedule table empty, and ``params`` dropped from
    ``config``. No row is lost."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    if "params" not in columns:
        return
    cursor = db.execute("SELECT * FROM runs")
    names = [c[0] for c in cursor.description]
    old = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    db.execute("ALTER TABLE runs RENAME TO runs_before_migration")
    db.execute(_SCHEMA)
    for row in old:
        params = json.loads(row.pop("params") or "{}")
        config = json.loads(row.get("config") or "{}")
        config.pop("params", None)
        scale = params.get("scale")
        row.update(
            guider_config=json.dumps({"name": row.get("guider"), **params}, sort_keys=True),
            gamma=float(scale) if isinstance(scale, int | float) and not isinstance(scale, bool) else None,
            schedule="[]",
            config=json.dumps(config, sort_keys=True),
        )
        keys = [*_COLUMNS, "finished_at"]
        db.execute(
            f"INSERT INTO runs ({', '.join(keys)}) VALUES ({', '.join('?' for _ in keys)})", [row.get(k) for k in keys]
        )
    db.execute("DROP TABLE runs_before_migration")


class ResultStore:
    """Rows of finished runs in ``path`` (SQLite); ``put`` is atomic, ``frame`` gives a flat DataFrame."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")
            with self._connect() as db:
                _migrate(db)
                db.execute(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise ValueError(f"store: {str(self.path)!r} is not a guidelab results store ({err})") from None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:  # one transaction: commit on success, roll back on error
                yield db
        finally:
            db.close()

    def put(self, row: dict[str, Any]) -> None:
        """Insert or replace one run's row (keyed by its configuration hash) in one transaction; ``attempts``
        becomes one more than the replaced row's (1 for a new row)."""
        values = [json.dumps(row.get(c, {}), sort_keys=True) if c in _JSON_COLUMNS else row.get(c) for c in _COLUMNS]
        placeholders = ", ".join("?" for _ in _COLUMNS)
        attempts = "COALESCE((SELECT attempts FROM runs WHERE hash = ?), 0) + 1"
        with self._connect() as db:
            db.execute(
                f"INSERT OR REPLACE INTO runs ({', '.join(_COLUMNS)}, attempts) VALUES ({placeholders}, {attempts})",
                [*values, row["hash"]],
            )

    def finished(self) -> set[str]:
        """Hashes of every recorded run (ok or error)."""
        return set(self.statuses())

    def statuses(self) -> dict[str, str]:
        """Each recorded run's status (``ok`` or ``error``) by hash."""
        with self._connect() as db:
            return dict(db.execute("SELECT hash, status FROM runs"))

    def rows_by_hash(self, hashes: list[str]) -> dict[str, dict[str, Any]]:
        """The stored rows of ``hashes`` (those recorded), by hash, JSON columns decoded."""
        out: dict[str, dict[str, Any]] = {}
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            for start in range(0, len(hashes), 500):
                chunk = hashes[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                for r in db.execute(f"SELECT * FROM runs WHERE hash IN ({marks})", chunk):
                    row = dict(r)
                    for c in _JSON_COLUMNS:
                        row[c] = json.loads(row[c])
                    out[row["hash"]] = row
        return out

    def rows(self) -> list[dict[str, Any]]:
        """All rows as dicts with the JSON columns decoded, in insertion order."""
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            out = []
            for r in db.execute("SELECT * FROM runs ORDER BY rowid"):
                row = dict(r)
                for c in _JSON_COLUMNS:
                    row[c] = json.loads(row[c])
                out.append(row)
            return out

    def frame(self) -> Any:
        """A pandas DataFrame with one column per guider parameter (``param.*``, the schedule's as
        ``param.schedule.*``) and metric (``metric.*``), beside the run's columns (``gamma`` among them)."""
        import pandas as pd

        flat = []
        for row in self.rows():
            entry = {k: v for k, v in row.items() if k not in _JSON_COLUMNS}
            params = {k: v for k, v in row["guider_config"].items() if k != "name"}
            schedule = params.pop("schedule", None)
            if isinstance(schedule, dict):
                params.update({f"schedule.{k}": v for k, v in schedule.items()})
            elif schedule is not None:
                params["schedule"] = schedule
            entry.update({f"param.{k}": _plain(v) for k, v in params.items()})
            entry.update({f"metric.{k}": v for k, v in row["metrics"].items()})
            flat.append(entry)
        return pd.DataFrame(flat)


def _plain(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value
