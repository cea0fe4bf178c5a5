"""An exclusive lock on a local file, held by one process at a time and freed when it dies.

`fcntl.flock` locks belong to the open file description, so the kernel drops them when the
holder exits for any reason (SIGKILL and OOM kills included): a stale lock file never blocks a
later run. The holder's pid and command are written into the file so that the process refused
can say who holds it, and so that one that waits can say whom it waits for.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

WAIT_REPORT_S = 30.0
"""How often a process waiting for a lock says it still waits: a silent `--wait` looks hung."""


def describe_holder(holder: dict[str, Any]) -> str:
    """`another climb process (pid …, `command`, since HH:MM:SS)`, from a lock file's record."""
    pid = holder.get("pid", "?")
    since = holder.get("since")
    started = time.strftime("%H:%M:%S", time.localtime(since)) if since else "an unknown time"
    return f"another climb process (pid {pid}, `{holder.get('command', '?')}`, since {started})"


class LockHeld(RuntimeError):
    """Another live process holds the lock."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path, self.holder = path, holder
        pid = holder.get("pid", "?")
        super().__init__(
            f"{describe_holder(holder)} holds {path}; wait for it to finish or stop it "
            f"(kill {pid}), or pass --wait"
        )


class FileLock:
    """`with FileLock(path):` holds an exclusive lock on `path` for the block.

    Args:
        path: The lock file (created with its folder).
        wait: Block until the holder releases it, instead of raising `LockHeld` at once.
        log: Where a waiting process says whom it waits for: when it starts waiting, every
            `report_every` seconds after, and once when it holds the lock. None: silent.
        report_every: Seconds between "still waiting" lines.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        wait: bool = False,
        log: Callable[[str], None] | None = None,
        report_every: float = WAIT_REPORT_S,
    ) -> None:
        self.path, self.wait, self.log, self.report_every = Path(path), wait, log, report_every
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
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not self.wait:
                fh.close()
                raise LockHeld(self.path, self.holder()) from None
            try:
                self._wait_for(fh)
            except BaseException:  # Ctrl-C while waiting: leave no open file behind
                fh.close()
                raise
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

    def _wait_for(self, fh: IO[str]) -> None:
        """Polls for the lock (a blocking `flock` could not report), saying whom it waits for.

        The holder is read again at each report: the lock may pass to another process meanwhile.
        """
        log = self.log or (lambda _: None)
        start = time.monotonic()
        log(f"waiting for {describe_holder(self.holder())} to release {self.path}")
        next_report = start + self.report_every
        while True:
            time.sleep(min(0.5, self.report_every))
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= next_report:
                    waited = round(now - start)
                    log(f"still waiting for {describe_holder(self.holder())} ({waited} s)")
                    next_report = now + self.report_every
        log(f"got {self.path} after {round(time.monotonic() - start)} s of waiting")

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
