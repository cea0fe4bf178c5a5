"""The jobs `climb run`'s Dagster runs carry, defined in the code location too.

The CLI runs each step in its own process under a job named for the step (`cli_<asset>`, and
`cli_ingest_shard` for a shard's ingestion). Defining the same names in the code location makes
every link to such a run's job (Runs page, run page, a partition's Job link) open, and puts the
CLI's runs on the Overview timeline.
"""

from collections.abc import Sequence
from typing import Any

import dagster as dg

from climb_assets.defs.partitions import shard_partitions
from climb_assets.defs.sensors import INGEST_ASSETS

CLI_JOB_DESCRIPTION = (
    "A step of `climb run` (or `climb demo`), run in the CLI's own process; the run's "
    "climb/command tag says which command started it."
)
INGEST_JOB = "cli_ingest_shard"


def cli_job_name(step: str) -> str:
    """The job name a `climb run` step's Dagster run carries (`cli_ingest_shard`, ...).

    A shard's ingestion runs several assets at once (named ``a+b+c``); it is one job.
    """
    return INGEST_JOB if "+" in step else f"cli_{step}"


def cli_jobs(assets: Sequence[dg.AssetsDefinition]) -> list[Any]:
    """One job per asset `climb run` materializes, and the shard-ingestion job (unresolved
    asset jobs, which `Definitions` resolves)."""
    jobs = [
        dg.define_asset_job(
            INGEST_JOB, selection=INGEST_ASSETS, partitions_def=shard_partitions,
            description=CLI_JOB_DESCRIPTION,
        )
    ]  # fmt: skip
    for asset in assets:
        # A multi-asset (a search round's four outputs) is one step, named for its node.
        keys = list(asset.keys)
        step = keys[0].path[-1] if len(keys) == 1 else asset.node_def.name
        jobs.append(
            dg.define_asset_job(cli_job_name(step), selection=keys, description=CLI_JOB_DESCRIPTION)
        )
    return jobs
