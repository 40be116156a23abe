"""The embedded results store of a sweep: one SQLite file, one tidy row per run.

Each row has fixed columns (run id, experiment, profile, kind, variant, seed, status, error,
timings, config hash, the full result as JSON) plus one column per flattened config key
(``data.resolution``, ``client.local_epochs``, ...), per run option (``run.round``) and per
metric (``psnr``, ``lpips``, ...). Columns are added as new keys appear, so a query such as
``SELECT "client.local_epochs", avg(lpips) FROM runs GROUP BY 1`` works directly.

Rows are written in one transaction as each run finishes: an interrupted sweep loses at most
the runs in flight, and a finished run is never redone.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gradleak.errors import GradleakError

FIXED = {
    "run_id": "TEXT PRIMARY KEY",
    "experiment": "TEXT",
    "profile": "TEXT",
    "kind": "TEXT",
    "variant": "TEXT",
    "seed": "INTEGER",
    "status": "TEXT",  # ok | failed
    "error": "TEXT",
    "seconds": "REAL",
    "started_at": "TEXT",
    "finished_at": "TEXT",
    "worker": "TEXT",
    "config_hash": "TEXT",
    "labels": "TEXT",  # JSON: the run's grid coordinates
    "result": "TEXT",  # JSON: the run's full result (metrics, warnings, provenance)
}
STORE_NAME = "results.sqlite"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


class ResultStore:
    """Open (and create) ``<folder>/results.sqlite``; safe to reopen after a crash."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / STORE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not self.path.is_file():
            raise GradleakError(f"results store {str(self.path)!r} is not a file")
        try:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            cols = ", ".join(f"{_quote(k)} {t}" for k, t in FIXED.items())
            self._db.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
            self._columns = self._read_columns()
        except sqlite3.DatabaseError as exc:  # random bytes, truncated file, not SQLite
            raise GradleakError(f"results store {str(self.path)!r} is not a gradleak results "
                                f"database ({exc}); move it away or use another folder") from None
        lacking = [k for k in FIXED if k not in self._columns]
        if lacking:
            self._db.close()
            raise GradleakError(f"results store {str(self.path)!r} is not a gradleak results "
                                f"database (table runs lacks {', '.join(lacking[:4])}); move it "
                                "away or use another folder")

    def _read_columns(self) -> set[str]:
        return {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def finished(self, run_ids: Iterable[str] | None = None) -> set[str]:
        """Ids of runs stored with status ``ok`` (optionally among ``run_ids``)."""
        done = {r[0] for r in self._db.execute("SELECT run_id FROM runs WHERE status = 'ok'")}
        return done if run_ids is None else done & set(run_ids)

    def put(self, row: dict[str, Any]) -> None:
        """Insert or replace one run's row (adds columns for new keys)."""
        row = dict(row)
        row.setdefault("finished_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        new = [k for k in row if k not in self._columns]
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for key in new:
                kind = "REAL" if isinstance(row[key], float) else ""
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {_quote(key)} {kind}")
            names = ", ".join(_quote(k) for k in row)
            marks = ", ".join("?" for _ in row)
            self._db.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES ({marks})",
                             [_sql_value(v) for v in row.values()])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._columns |= set(new)

    def rows(self, *, experiment: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Stored rows as dicts (``labels`` and ``result`` parsed), oldest first."""
        query, args = "SELECT * FROM runs", []
        where = []
        if experiment is not None:
            where.append("experiment = ?")
            args.append(experiment)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if where:
            query += " WHERE " + " AND ".join(where)
        cur = self._db.execute(query + " ORDER BY finished_at, rowid", args)
        names = [d[0] for d in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values, strict=True))
            for key in ("labels", "result"):
                if row.get(key):
                    try:
                        row[key] = json.loads(row[key])
                    except (TypeError, ValueError):
                        raise GradleakError(f"results store {str(self.path)!r}: run "
                                            f"{row.get('run_id')!r} has a damaged {key} column "
                                            "(not JSON)") from None
            out.append(row)
        return out

    def experiments(self) -> list[str]:
        return [r[0] for r in self._db.execute(
            "SELECT experiment FROM runs GROUP BY experiment ORDER BY min(rowid)")]
