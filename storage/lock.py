"""A lock object in the store, so that two runs never build the same stage output at once.

The lock is created with an exclusive write (O_EXCL locally, a conditional PUT on S3) and kept
alive by a heartbeat. A lock whose holder is gone is broken: at once when the holder was a
process on this machine that no longer exists (a SIGKILLed run), otherwise once its heartbeat is
older than the time-to-live.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from storage.settings import Settings, current_settings
from storage.store import DamagedObjectError, Store

LOCK_TTL_ENV = Settings.variable("lock_ttl_seconds")
POLL_SECONDS = 1.0
# A lock object that stays unreadable this long is garbage (a crash mid-write, or planted).
GARBAGE_SECONDS = 5.0


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StageLock:
    """An exclusive, heartbeated lock object at ``rel`` in a store."""

    def __init__(self, store: Store, rel: str, log: logging.Logger | logging.LoggerAdapter):
        self.store = store
        self.rel = rel
        self.log = log
        self.ttl = current_settings().lock_ttl_seconds
        self.owner = uuid.uuid4().hex
        self._stop = threading.Event()
        self._garbage_since: float | None = None

    def _content(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "heartbeat": time.time(),
            }
        ).encode()

    def _is_stale(self, lock: dict) -> bool:
        if lock.get("host") == socket.gethostname() and not _process_alive(int(lock["pid"])):
            return True
        return time.time() - float(lock.get("heartbeat", 0)) > self.ttl

    def _read_lock(self) -> dict | None:
        """The lock's record; an empty dict for one that stays unreadable (so it is broken)."""
        try:
            lock = self.store.read_json(self.rel)
            self._is_stale(lock)  # the fields parse
        except FileNotFoundError:
            return None  # released this instant: try again next poll
        except (DamagedObjectError, ValueError, KeyError, TypeError, AttributeError):
            now = time.time()
            self._garbage_since = self._garbage_since or now
            return {} if now - self._garbage_since > GARBAGE_SECONDS else None
        self._garbage_since = None
        return lock

    def _try_acquire(self) -> bool:
        if self.store.create_exclusive(self.rel, self._content()):
            return True
        lock = self._read_lock()
        if lock is None:
            return False
        if lock == {} or self._is_stale(lock):
            self.log.warning(
                "breaking the stale lock %s of pid %s on %s",
                self.store.uri(self.rel),
                lock.get("pid"),
                lock.get("host"),
            )
            # Re-read just before removing, so that a fresh lock taken meanwhile is kept.
            with contextlib.suppress(FileNotFoundError):
                if (self._read_lock() or {}).get("owner") == lock.get("owner"):
                    self.store.remove(self.rel)
            return self.store.create_exclusive(self.rel, self._content())
        return False

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                self.store.write_bytes(self.rel, self._content())

    @contextlib.contextmanager
    def hold(self, until: Callable[[], bool]) -> Iterator[bool]:
        """Wait for the lock and hold it; stop waiting early once ``until()`` is true.

        Yields whether the lock is held.
        """
        waited = False
        while not self._try_acquire():
            if until():
                yield False
                return
            if not waited:
                self.log.info("%s is held by another run; waiting for it", self.store.uri(self.rel))
                waited = True
            time.sleep(POLL_SECONDS)
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        beat.start()
        try:
            yield True
        finally:
            self._stop.set()
            beat.join()
            with contextlib.suppress(Exception):
                self.store.remove(self.rel)
