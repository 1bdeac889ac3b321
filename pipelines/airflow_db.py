"""Connection arguments for Airflow's metadata database, imported by Airflow itself.

Airflow reads `[database] sql_alchemy_connect_args` as an import path. On SQLite (the local
default) four Airflow processes and every task share one file; Python's default 5 s lock wait
turns a busy moment on a loaded 2-core machine into an HTTP 500. Wait longer instead.
"""

from __future__ import annotations

SQLITE_LOCK_WAIT_S = 60

SQLITE_CONNECT_ARGS = {"timeout": SQLITE_LOCK_WAIT_S}
# A separate dict: Airflow adds sync-only keys to the one it is given.
SQLITE_ASYNC_CONNECT_ARGS = {"timeout": SQLITE_LOCK_WAIT_S}
