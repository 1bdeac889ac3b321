"""The champion the answering service serves, kept in step with the MLflow registry.

`ChampionHolder` loads `models:/<name>@champion` (its adapter verified against the sha256
recorded at registration, by the behaviour layer's `load_version`), then re-reads the alias
every `CHAMPION_POLL_S` and at once when `promote_model` / `pipelines promote` / rollback touch
`champion_signal_file`. A new version is loaded beside the one serving and swapped in with one
reference assignment: a request calls `current()` once and uses that `LoadedChampion` to the end,
so no request mixes versions and none waits for a load.

Fail closed: a load that fails (hash mismatch, unreadable artifact) or a registry that errors keeps
the serving champion, logged at ERROR and counted in `champion_load_failures_total` /
`champion_registry_errors_total`; an alias that disappears is not read as "serve the base model"
either. A notification carries no version, only "look again", so it cannot choose what loads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from pipelines.settings import Settings

log = logging.getLogger(__name__)

SIGNAL_CHECK_S = 1.0  # how often the watcher stats the signal file (a stat is cheap; a registry call is not)

SWAPS = Counter("champion_swaps_total", "Champion versions swapped in (first load included)")
LOAD_FAILURES = Counter("champion_load_failures_total", "Champion loads refused or failed; the old one kept serving")
REGISTRY_ERRORS = Counter("champion_registry_errors_total", "Registry look-ups of the champion alias that failed")
SERVING = Gauge("champion_serving_info", "The champion version serving (value 1)", ["version", "adapter_sha256"])


class ChampionNotReady(RuntimeError):
    """No champion has been loaded yet (readiness is false)."""


@dataclass(frozen=True)
class LoadedChampion:
    """One loaded version: what a request uses from start to end."""

    version: str | None  # None: the base model alone (the registry has no champion)
    model: Any
    tokenizer: Any
    adapter_sha256: str | None
    description: str
    loaded_at: str


@dataclass(frozen=True)
class ChampionStatus:
    """What the holder serves and what its last look at the registry found."""

    version: str | None
    ready: bool
    last_check_at: str | None
    last_error: str | None
    failed_version: str | None  # the version whose load failed last (None once a load succeeds)


class ChampionHolder:
    """Serves the registry's champion; swaps atomically when the alias moves; keeps the old one on any failure."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._current: LoadedChampion | None = None
        self._refresh_lock = threading.Lock()  # one registry check / load at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_check_at: str | None = None
        self._last_error: str | None = None
        self._failed_version: str | None = None

    @property
    def ready(self) -> bool:
        """True once a champion (or, with no champion registered, the base model) is loaded."""
        return self._current is not None

    def current(self) -> LoadedChampion:
        """The champion serving now; take it once per request. Raises ChampionNotReady before the first load."""
        loaded = self._current  # one read: a concurrent swap cannot hand this request a mix
        if loaded is None:
            raise ChampionNotReady("the champion model is still loading")
        return loaded

    def status(self) -> ChampionStatus:
        """Serving version, readiness and the last check's outcome."""
        loaded = self._current
        return ChampionStatus(
            loaded.version if loaded else None,
            loaded is not None,
            self._last_check_at,
            self._last_error,
            self._failed_version,
        )

    def refresh(self) -> bool:
        """Read the alias and load the version it names if it is not the one serving; True when swapped."""
        from pipelines.behaviour.registry import CHAMPION, alias_version

        with self._refresh_lock:
            self._last_check_at = datetime.now(UTC).isoformat(timespec="seconds")
            try:
                version = alias_version(self.settings, CHAMPION)
            except Exception as err:  # noqa: BLE001 - any registry failure: keep serving what we have
                REGISTRY_ERRORS.inc()
                self._last_error = f"registry: {type(err).__name__}: {err}"[:500]
                log.error("champion check failed, keeping %s: %s", self._serving(), self._last_error)
                return False
            loaded = self._current
            if loaded is not None and version == loaded.version:
                self._last_error = None
                return False
            if loaded is not None and version is None:
                # Only a person removing the alias does this; serving the base model instead would be a
                # silent downgrade, so keep the champion and say so.
                self._last_error = f"{self.settings.registered_model}@champion no longer exists"
                log.error("%s; keeping %s", self._last_error, self._serving())
                return False
            return self._load(version)

    def _load(self, version: str | None) -> bool:
        from pipelines.behaviour.answering import load_version

        started = time.perf_counter()
        try:
            model = load_version(self.settings, version)
        except Exception as err:  # noqa: BLE001 - IntegrityError, download or load errors: fail closed
            LOAD_FAILURES.inc()
            self._failed_version = version
            self._last_error = f"loading version {version}: {type(err).__name__}: {err}"[:500]
            log.error("champion load refused, keeping %s: %s", self._serving(), self._last_error)
            return False
        new = LoadedChampion(
            version,
            model.model,
            model.tokenizer,
            model.adapter_sha256,
            model.description,
            datetime.now(UTC).isoformat(timespec="seconds"),
        )
        previous, self._current = self._current, new  # the swap: requests already running keep `previous`
        self._failed_version = self._last_error = None
        SWAPS.inc()
        if previous is not None:
            SERVING.remove(str(previous.version), str(previous.adapter_sha256))
        SERVING.labels(str(version), str(new.adapter_sha256)).set(1)
        log.warning(
            "champion %s -> %s (%s) loaded in %.1f s",
            previous.version if previous else "none",
            version,
            new.description,
            time.perf_counter() - started,
        )
        return True

    def _serving(self) -> str:
        loaded = self._current
        return f"version {loaded.version}" if loaded else "nothing (not ready)"

    def notify(self) -> None:
        """Ask for a registry check now (the watcher thread does it); carries no version."""
        self._wake.set()

    def start(self) -> None:
        """Start the watcher thread: first load at once, then polls and signal-file checks."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="champion-watcher", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the watcher (an in-progress load finishes first)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until the first load is done or `timeout_s` passes; returns readiness."""
        deadline = time.monotonic() + timeout_s
        while not self.ready and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.ready

    def _signal_stamp(self) -> int | None:
        try:
            return self.settings.champion_signal_file.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _watch(self) -> None:
        stamp = self._signal_stamp()
        due = 0.0  # first check at once
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= due or self._wake.is_set():
                self._wake.clear()
                self.refresh()
                # Not ready yet (registry down, first load refused): retry soon rather than a full poll later.
                due = time.monotonic() + (
                    self.settings.champion_poll_s if self.ready else min(5.0, self.settings.champion_poll_s)
                )
            self._wake.wait(SIGNAL_CHECK_S)
            seen = self._signal_stamp()
            if seen != stamp:
                stamp = seen
                self._wake.set()
