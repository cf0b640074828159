"""The profile set that is serving now, and safe reloading of it.

``ProfileCatalog.reload()`` loads the directory; a set with any problem is refused as a whole
and the previous set keeps serving, while ``problems`` says why (for the status page and
``ztpd check``). ``changed()`` is a cheap stat scan (names, sizes, mtimes) to call on a timer;
SIGHUP can call ``reload()`` directly. Thread-safe: reloads are serialised, and readers get
the current set through one attribute read.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ztpd.errors import Problem, SourceError
from ztpd.profiles.loader import load_profiles, watched_files
from ztpd.profiles.matching import ProfileSet

log = logging.getLogger("ztpd.profiles")

Signature = tuple[tuple[str, int, int], ...]


def signature(directory: Path) -> Signature:
    """What the change detector compares: each watched file's name, size and mtime."""
    out = []
    for f in watched_files(directory):
        try:
            st = f.stat()
        except OSError:
            continue  # removed between listing and stat: the next scan sees it gone
        out.append((f.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


@dataclass(frozen=True)
class Status:
    """What the page and ``ztpd check`` show about the profiles."""

    directory: str
    profiles: tuple[str, ...]  # the serving set, in match order
    digest: str
    loaded_at: float | None  # when the serving set was loaded (time.time())
    generation: int  # bumps each time a new set starts serving
    problems: tuple[Problem, ...]  # why the files on disk are not serving; empty when they are


class ProfileCatalog:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.current = ProfileSet([])
        self.problems: tuple[Problem, ...] = ()
        self.loaded_at: float | None = None
        self.generation = 0
        self._seen: Signature | None = None
        self._lock = threading.Lock()

    def changed(self) -> bool:
        """True when the files differ from those of the last reload attempt."""
        return signature(self.directory) != self._seen

    def reload(self) -> bool:
        """Load the directory; True when a new set now serves (False: unchanged or refused)."""
        with self._lock:
            self._seen = signature(self.directory)
            try:
                new = load_profiles(self.directory)
            except SourceError as e:
                self.problems = tuple(e.problems)
                log.warning(
                    "profiles refused dir=%s problems=%d first=%r serving=%s",
                    self.directory, len(e.problems), str(e.problems[0]) if e.problems else "",
                    self.current.digest or "none",
                )  # fmt: skip
                return False
            self.problems = ()
            if self.loaded_at is not None and new.digest == self.current.digest:
                return False
            self.current = new
            self.loaded_at = time.time()
            self.generation += 1
            log.info(
                "profiles loaded dir=%s count=%d digest=%s generation=%d",
                self.directory, len(new), new.digest, self.generation,
            )  # fmt: skip
            return True

    def reload_if_changed(self) -> bool:
        """For a timer: reload only when the stat scan sees a change."""
        return self.changed() and self.reload()

    def status(self) -> Status:
        with self._lock:
            return Status(
                str(self.directory), tuple(self.current.names), self.current.digest,
                self.loaded_at, self.generation, self.problems,
            )  # fmt: skip
