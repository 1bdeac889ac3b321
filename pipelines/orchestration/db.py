"""Connection arguments for Airflow's metadata database, imported by Airflow itself.

Airflow reads `[database] sql_alchemy_connect_args` as an import path. On SQLite (the local
default) four Airflow processes and every task share one file; Python's default 5 s lock wait
turns a busy moment on a loaded 2-core machine into an HTTP 500. Wait longer instead. Other
databases get no extra arguments (PostgreSQL's drivers reject `timeout`).
"""

from __future__ import annotations

import os

SQLITE_LOCK_WAIT_S = 60


def _connect_args() -> dict[str, float]:
    url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    return {"timeout": SQLITE_LOCK_WAIT_S} if url.startswith("sqlite") else {}


CONNECT_ARGS = _connect_args()
# A separate dict: Airflow adds sync-only keys to the one it is given.
ASYNC_CONNECT_ARGS = _connect_args()
