"""A lock object in the store, so that two runs never build the same stage output at once.

The lock is created with an exclusive write (O_EXCL locally, a conditional PUT on S3) and never
rewritten: the holder's heartbeat goes to an object of its own beside it, named by the holder.
So a holder whose lock another run broke (its heartbeat older than the time-to-live, after a
pause or a partition) cannot overwrite the new holder's lock; its next beat finds the lock no
longer its own and stops, and it commits nothing. A lock whose holder is gone is broken: at once
when the holder was a process on this machine that no longer exists (a SIGKILLed run),
otherwise once its heartbeat is older than the time-to-live.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

from storage.errors import RunFailure
from storage.settings import Settings, current_settings
from storage.store import DamagedObjectError, Store

LOCK_TTL_ENV = Settings.variable("lock_ttl_seconds")
POLL_SECONDS = 1.0
# A lock object that stays unreadable this long is garbage (a crash mid-write, or planted).
GARBAGE_SECONDS = 5.0
# The owners whose locks this process holds now: a lock of this process's pid whose owner is not
# among them was left by an attempt that has ended.
_HELD_HERE: set[str] = set()
_HELD_HERE_GUARD = threading.Lock()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LockLostError(RunFailure):
    """Another run broke this run's lock while it held it; what it built is not committed."""


def heartbeat_rel(rel: str, owner: str) -> str:
    """Where the holder ``owner`` of the lock at ``rel`` writes its heartbeat."""
    return f"{rel}.beat-{owner}"


def _owner(lock: dict) -> str | None:
    """A lock's owner when it is one this module writes (a uuid4's hex), else None: a planted
    owner such as ``../..`` must never name an object to read or remove."""
    owner = lock.get("owner")
    return owner if isinstance(owner, str) and re.fullmatch(r"[0-9a-f]{32}", owner) else None


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
        self.lost: dict | None = None  # the lock found in place of this one's, once lost

    def _content(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "heartbeat": time.time(),
            }
        ).encode()

    def _last_beat(self, lock: dict) -> float:
        """The newest heartbeat of a lock's holder: its own object's, else the lock's creation."""
        beat = float(lock.get("heartbeat", 0))
        if (owner := _owner(lock)) is None:
            return beat
        with contextlib.suppress(Exception):  # no beat yet, or a damaged one: the lock's time
            record = self.store.read_json(heartbeat_rel(self.rel, owner))
            beat = max(beat, float(record["heartbeat"]))
        return beat

    def _is_stale(self, lock: dict) -> bool:
        if lock.get("host") == socket.gethostname():
            pid = int(lock["pid"])
            if not _process_alive(pid):
                return True
            if pid == os.getpid():
                with _HELD_HERE_GUARD:
                    if lock.get("owner") not in _HELD_HERE:
                        return True
        return time.time() - self._last_beat(lock) > self.ttl

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
                    if (owner := _owner(lock)) is not None:
                        self.store.remove(heartbeat_rel(self.rel, owner))
            return self.store.create_exclusive(self.rel, self._content())
        return False

    def _holder(self) -> dict | None:
        """The lock now in place (None when there is none or it cannot be read)."""
        try:
            lock = self.store.read_json(self.rel)
        except (FileNotFoundError, DamagedObjectError):
            return None
        return lock if isinstance(lock, dict) else None

    def _beat_once(self) -> bool:
        """Renew this run's heartbeat if the lock is still its own; return whether it is."""
        holder = self._holder()
        if (holder or {}).get("owner") != self.owner:
            self.lost = holder or {}
            self.log.error(
                "the lock %s was broken by another run (pid %s on %s) while this run held it; "
                "this run will not commit what it builds",
                self.store.uri(self.rel),
                self.lost.get("pid"),
                self.lost.get("host"),
            )
            return False
        beat = {"owner": self.owner, "heartbeat": time.time()}
        self.store.write_bytes(heartbeat_rel(self.rel, self.owner), json.dumps(beat).encode())
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                if not self._beat_once():
                    return
            except Exception:  # a missed beat is retried at the next one
                continue

    def check_held(self) -> None:
        """Raise ``LockLostError`` unless this run still holds the lock (just before a commit)."""
        if self.lost is None and (self._holder() or {}).get("owner") == self.owner:
            return
        holder = self.lost if self.lost is not None else (self._holder() or {})
        raise LockLostError(
            f"the lock {self.store.uri(self.rel)} was broken by another run (pid "
            f"{holder.get('pid')} on {holder.get('host')}) while this run built the output, "
            f"its heartbeat having been older than {self.ttl:g} s (a paused or cut-off "
            "machine); nothing of this run was committed, and the other run builds it: run "
            "again to reuse its output"
        )

    @contextlib.contextmanager
    def hold(self, until: Callable[[], bool]) -> Iterator[bool]:
        """Wait for the lock and hold it; stop waiting early once ``until()`` is true.

        Yields whether the lock is held.
        """
        with _HELD_HERE_GUARD:  # before the lock exists, so no one here takes it for stale
            _HELD_HERE.add(self.owner)
        try:
            waited = False
            while not self._try_acquire():
                if until():
                    yield False
                    return
                if not waited:
                    self.log.info(
                        "%s is held by another run; waiting for it", self.store.uri(self.rel)
                    )
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
                    self.store.remove(heartbeat_rel(self.rel, self.owner))
                    if (self._holder() or {}).get("owner") == self.owner:
                        self.store.remove(self.rel)
        finally:
            with _HELD_HERE_GUARD:
                _HELD_HERE.discard(self.owner)
