"""An exclusive lock on a local file, held by one process at a time and freed when it dies.

`fcntl.flock` locks belong to the open file description, so the kernel drops them when the
holder exits for any reason (SIGKILL and OOM kills included): a stale lock file never blocks a
later run. The holder's pid and command are written into the file so that the process refused
can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any


class LockHeld(RuntimeError):
    """Another live process holds the lock."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path, self.holder = path, holder
        pid = holder.get("pid", "?")
        since = holder.get("since")
        started = time.strftime("%H:%M:%S", time.localtime(since)) if since else "an unknown time"
        super().__init__(
            f"another climb process (pid {pid}, `{holder.get('command', '?')}`, since {started}) "
            f"holds {path}; wait for it to finish or stop it (kill {pid}), or pass --wait"
        )


class FileLock:
    """`with FileLock(path):` holds an exclusive lock on `path` for the block.

    Args:
        path: The lock file (created with its folder).
        wait: Block until the holder releases it, instead of raising `LockHeld` at once.
    """

    def __init__(self, path: str | os.PathLike, wait: bool = False) -> None:
        self.path, self.wait = Path(path), wait
        self._fh: IO[str] | None = None

    def holder(self) -> dict[str, Any]:
        """What the current holder wrote into the lock file (empty when unreadable)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            fh.close()
            raise LockHeld(self.path, self.holder()) from None
        fh.seek(0)
        fh.truncate()
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(["climb", *sys.argv[1:]])[:200],
            "since": time.time(),
        }
        fh.write(json.dumps(record))
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
