"""The manifest's exports, one module per format behind `Exporter` (see `base`).

`megatron`: indexed datasets and a `--data-path` blend for Megatron-LM / NeMo. `hf`: Parquet
folders and a dataset card for Hugging Face `datasets`. `climblab`: the whole kept corpus grouped
by super-cluster, for re-mixing.
"""

from climb_assets.lib.exports.base import (
    ExportContext,
    Exporter,
    ExportError,
    completed,
    run_export,
)
from climb_assets.lib.exports.climblab import ClimbLabExport
from climb_assets.lib.exports.hf import HFExport
from climb_assets.lib.exports.megatron import MegatronExport

EXPORTERS: dict[str, type[Exporter]] = {
    e.name: e for e in (MegatronExport, HFExport, ClimbLabExport)
}
"""Every export by the name `manifest.exports` uses."""

__all__ = [
    "EXPORTERS",
    "ExportContext",
    "ExportError",
    "Exporter",
    "completed",
    "run_export",
]
