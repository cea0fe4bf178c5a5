"""What killed or blocked `climb` processes leave behind: a wait that says whom it waits for, and
staging folders of killed exports removed by the next export (never one a live process writes)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from climb_assets.defs.resources import ClimbResource
from climb_assets.lib.exports.base import (
    STAGING_MAX_IDLE_S,
    ExportContext,
    Exporter,
    run_export,
    staging_name,
)
from climb_assets.lib.storage import Store
from climb_assets_tests.conftest import write_profile

HOLD = """
import sys
sys.argv = ["climb", "run", "--holder-from-test"]
from climb_assets.lib.locks import FileLock
lock = FileLock({path!r})
lock.acquire()
print("held", flush=True)
sys.stdin.read()
"""


def _hold(path: Path) -> subprocess.Popen:
    """A second process holding the lock on `path` until its stdin is closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD.format(path=str(path))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_waiting_run_says_whom_it_waits_for_then_that_it_got_the_lock(tmp_path, monkeypatch):
    from climb_assets.runner import exclusive_instance

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    climb = ClimbResource(profile=str(write_profile(tmp_path)))
    holder = _hold(tmp_path / "out" / ".climb-run.lock")  # the storage root's lock
    lines: list[str] = []

    def release_after_two_reports() -> None:  # the waiting run stays in the main thread
        deadline = time.monotonic() + 60
        while sum("still waiting for" in ln for ln in lines) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        holder.stdin.close()

    releaser = threading.Thread(target=release_after_two_reports, daemon=True)
    releaser.start()
    try:
        with exclusive_instance(climb, wait=True, log=lines.append, wait_report_s=0.2) as inst:
            assert holder.wait(timeout=10) == 0  # it got the lock only once the holder left
            inst.dispose()
    finally:
        releaser.join(timeout=10)
        if holder.poll() is None:
            holder.kill()
    assert lines, "the wait said nothing"
    named = f"pid {holder.pid}, `climb run --holder-from-test`"
    assert named in lines[0] and lines[0].startswith("waiting for another climb process"), lines
    still = [ln for ln in lines if ln.startswith("still waiting for")]
    assert len(still) >= 2 and all(named in ln and ln.endswith(" s)") for ln in still), lines
    assert lines[-1].startswith("got ") and ".climb-run.lock" in lines[-1], lines


class _OneFile(Exporter):
    """The smallest honest exporter: one file."""

    name = "trivial"

    def write(self, ctx: ExportContext, out: Path, log) -> dict[str, Any]:
        (out / "data.txt").write_text("x")
        return {}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(params=["local", "s3"])
def store_and_staging(request, tmp_path) -> tuple[Store, Path]:
    """A store and the local folder its exports stage in (for S3: the cache's spool)."""
    if request.param == "local":
        store = Store(str(tmp_path / "out"))
        return store, tmp_path / "out" / "exports"
    s3 = request.getfixturevalue("s3_server")
    root = f"{s3.bucket('climb-leftovers')}/{tmp_path.name}"
    return Store(
        root, s3.storage_options(), cache=tmp_path / "cache"
    ), tmp_path / "cache" / "_spool"


def test_next_export_removes_staging_of_killed_exports_only(store_and_staging):
    store, staging = store_and_staging
    live = staging / staging_name("trivial", "tmp")  # this test's own pid: a writer alive now
    dead = staging / live.name.replace(f".{os.getpid()}.", f".{_dead_pid()}.")
    dead_old = staging / staging_name("trivial", "old").replace(
        f".{os.getpid()}.", f".{_dead_pid()}."
    )  # killed between moving the previous export aside and publishing the new one
    stale = staging / ".trivial.0123456789abcdef0123456789abcdef.tmp"  # name before pids
    recent = staging / ".trivial.fedcba9876543210fedcba9876543210.tmp"
    other = staging / f".other{live.name[len('.trivial') :]}".replace(
        f".{os.getpid()}.", f".{_dead_pid()}."
    )  # another export's leftover: that export's next run removes it
    for folder in (live, dead, dead_old, stale, recent, other):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "part.bin").write_bytes(b"half written")
    long_ago = time.time() - STAGING_MAX_IDLE_S - 3600
    for path in (stale, stale / "sub", stale / "sub" / "part.bin"):
        os.utime(path, (long_ago, long_ago))
    ctx = ExportContext(
        store=store, manifest_digest="d", weights=np.array([1.0]), parts=[], granted_tokens=[1]
    )
    lines: list[str] = []
    record = run_export(_OneFile(), ctx, lines.append)
    assert record["skipped"] is False and store.read_bytes("exports/trivial/data.txt") == b"x"
    assert not dead.exists() and not dead_old.exists() and not stale.exists()
    assert live.exists() and recent.exists() and other.exists()
    removed = [ln for ln in lines if "removed" in ln]
    assert len(removed) == 3 and all("staging folder of a killed export" in ln for ln in removed)
    assert sorted(p.name for p in staging.glob(".trivial.*")) == sorted([live.name, recent.name])
