"""When each (name, tag) was last pulled: in memory on every pull, saved to disk only now and then."""

from __future__ import annotations

import json
import threading

from twisted.logger import Logger

from nixforge.store.durable import replace_file

log = Logger()
_FORMAT = 1


class PullTimes:
    """(name, tag) → last pull time; `record` is a dict update, `save` writes `path` if it changed.

    GC saves before each run and the registry at shutdown, so a crash loses at most the pulls since
    the last run: an image looks a little less recently used, nothing worse.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._times: dict[tuple[str, str], float] = {}
        self._dirty = False
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as file:
                data = json.load(file)
            if not isinstance(data, dict) or data.get("format") != _FORMAT:
                raise ValueError("not a pull times file of a known format")
            for name, tag, when in data["pulls"]:
                if isinstance(name, str) and isinstance(tag, str) and isinstance(when, (int, float)):
                    self._times[(name, tag)] = float(when)
        except FileNotFoundError:
            pass
        except Exception as error:  # a bad file costs only recency, never start-up
            log.warn("ignoring unreadable pull times {path}: {error}", path=self.path, error=error)

    def record(self, name: str, tag: str, when: float) -> None:
        """Remember that name:tag was pulled at `when` (no disk work)."""
        with self._lock:
            self._times[(name, tag)] = max(when, self._times.get((name, tag), when))
            self._dirty = True

    def get(self, name: str, tag: str) -> float | None:
        """The last pull time of name:tag, or None if never pulled (since it was built)."""
        with self._lock:
            return self._times.get((name, tag))

    def forget(self, name: str, tag: str) -> None:
        """Drop name:tag (its image was evicted)."""
        with self._lock:
            if self._times.pop((name, tag), None) is not None:
                self._dirty = True

    def save(self) -> bool:
        """Write the times durably if they changed since the last save; return whether it wrote. Blocks."""
        with self._lock:
            if not self._dirty:
                return False
            body = json.dumps({"format": _FORMAT, "pulls": sorted([n, t, w] for (n, t), w in self._times.items())})
            self._dirty = False
        try:
            replace_file(self.path, body.encode("utf-8"))
        except BaseException:
            with self._lock:
                self._dirty = True
            raise
        return True
