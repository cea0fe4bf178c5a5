"""Keeps runs that died from blocking later ones, and says who holds a pool slot a step waits on.

A run killed with SIGKILL (or by the OOM killer, or with its node) never writes its failure
event, so Dagster keeps it STARTED and keeps the `gpu` pool slot it claimed: every later GPU step
waits forever. Daemon-launched runs on Kubernetes or ECS are covered by Dagster's run monitoring
(see `deploy/dagster.yaml`). Locally, `climb run` covers its own runs (each carries its process
id and host as tags) and, on a local SQLite instance, the runs the UI or the daemon launched (the
run worker reports its pid in its first engine event): a run whose process is gone is marked
failed and its slots freed before anything new starts.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg
from dagster._core.storage.runs import SqliteRunStorage  # no public way to ask "is it local"

RUNNER_TAG = "climb/runner"
PID_TAG = "climb/pid"
HOST_TAG = "climb/host"
ATTEMPT_TAG = "climb/attempt"
COMMAND_TAG = "climb/command"
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def cli_run_tags() -> dict[str, str]:
    """Tags of one `climb run` step: the command, who runs it (pid, host), a unique attempt id."""
    return {
        RUNNER_TAG: "cli",
        COMMAND_TAG: " ".join(["climb", *sys.argv[1:]])[:200],
        PID_TAG: str(os.getpid()),
        HOST_TAG: socket.gethostname(),
        ATTEMPT_TAG: uuid.uuid4().hex,
    }


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid a run's worker reported in its first engine event that carries one."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.engine_event_data if event is not None else None
        pid = data.metadata.get("pid") if data is not None else None
        if pid is not None:
            return int(str(pid.value))
    return None


def _describe(run: dg.DagsterRun) -> str:
    partition = run.tags.get("dagster/partition")
    steps = ",".join(sorted(k.path[-1] for k in run.asset_selection or ()))
    where = f" [{partition}]" if partition else ""
    return f"{run.run_id[:8]} ({steps or run.job_name}{where})"


def reap_dead_runs(instance: dg.DagsterInstance) -> str | None:
    """Marks this host's `climb` runs whose process is gone as failed and frees their slots.

    Also frees pool slots still claimed by runs that have already finished. Returns one line
    saying what was done, or None when nothing was.
    """
    host, me = socket.gethostname(), os.getpid()
    local = isinstance(instance.run_storage, SqliteRunStorage)
    dead = []
    for record in instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT)):
        run = record.dagster_run
        if run.tags.get(RUNNER_TAG) == "cli":
            pid = int(run.tags.get(PID_TAG, "0") or 0) if run.tags.get(HOST_TAG) == host else 0
        elif local and run.status == dg.DagsterRunStatus.STARTED:
            pid = worker_pid(instance, run.run_id) or 0
        else:
            continue
        if not pid or pid == me or process_alive(pid):
            continue
        instance.report_run_failed(
            run, f"climb: the process of this run (pid {pid}) is gone; marked failed"
        )
        dead.append(run)
    storage = instance.event_log_storage
    freed = 0
    if storage.supports_global_concurrency_limits:
        holders = storage.get_concurrency_run_ids()
        stale = {r.run_id for r in dead}
        if holders:
            finished = dg.RunsFilter(run_ids=sorted(holders), statuses=FINISHED)
            stale |= {r.dagster_run.run_id for r in instance.get_run_records(finished)}
        for run_id in sorted(stale & holders):
            storage.free_concurrency_slots_for_run(run_id)
            freed += 1
    if not dead and not freed:
        return None
    runs = ", ".join(_describe(r) for r in dead) or "none"
    return (
        f"cleaned up after killed runs: marked failed {len(dead)} run(s) whose process is gone "
        f"({runs}); freed the pool slots held by {freed} ended run(s)"
    )


def pool_holders(instance: dg.DagsterInstance, pool: str, run_id: str) -> list[str]:
    """Descriptions of the runs holding `pool`'s slots while `run_id` waits for one."""
    info = instance.event_log_storage.get_concurrency_info(pool)
    waiting = any(p.run_id == run_id and p.assigned_timestamp is None for p in info.pending_steps)
    if not waiting:
        return []
    out = []
    for slot in info.claimed_slots:
        if slot.run_id == run_id:
            continue
        run = instance.get_run_by_id(slot.run_id)
        status = run.status.value if run else "deleted"
        out.append(f"run {_describe(run) if run else slot.run_id[:8]} ({status})")
    return out


@contextmanager
def watch_pool_waits(
    instance: dg.DagsterInstance,
    attempt: str,
    pools: tuple[str, ...],
    log: Callable[[str], None],
    after_s: float = 5.0,
    poll_s: float = 1.0,
) -> Iterator[None]:
    """While the block runs, says once per pool which run holds a slot this attempt waits on.

    `attempt` is the `ATTEMPT_TAG` value of the run started in the block.
    """
    stop = threading.Event()

    def watch() -> None:
        start, told = time.monotonic(), set()
        while not stop.wait(poll_s):
            if time.monotonic() - start < after_s:
                continue
            runs = instance.get_runs(dg.RunsFilter(tags={ATTEMPT_TAG: attempt}), limit=1)
            if not runs:
                continue
            for pool in pools:
                if pool in told:
                    continue
                try:
                    holders = pool_holders(instance, pool, runs[0].run_id)
                except Exception:  # a diagnostic must never break the run
                    holders = []
                if holders:
                    told.add(pool)
                    log(
                        f"  waiting for a slot of pool '{pool}', held by {'; '.join(holders)}; "
                        f"if that run is gone, cancel it in the UI or `dagster run delete <id>`"
                    )

    thread = threading.Thread(target=watch, name="climb-pool-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
