"""The manifest's exports, one module per format behind `Exporter` (see `base`).

`tokenizer`: the training tokenizer as a folder `AutoTokenizer` loads, its EOS the data's
end-of-document id. `megatron`: training and validation indexed datasets, blends and
`pretrain_gpt.py` arguments for Megatron-LM / NeMo. `hf`: pre-mixed train and validation
Parquet splits and a dataset card for Hugging Face `datasets`. `climblab`: the whole kept corpus
grouped by super-cluster, for re-mixing.
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
from climb_assets.lib.exports.tokenizer import TokenizerExport

EXPORTERS: dict[str, type[Exporter]] = {
    e.name: e for e in (TokenizerExport, MegatronExport, HFExport, ClimbLabExport)
}
"""Every export by the name `manifest.exports` uses, in the order they are built."""
NEEDS_TOKENIZER = ("megatron", "hf")
"""Exports whose data is read with the training tokenizer: the `tokenizer` export travels with
them."""


def exports_to_build(names: tuple[str, ...] | list[str]) -> list[str]:
    """The exports `manifest.exports` names, with the tokenizer wherever its data needs it, in
    `EXPORTERS` order."""
    wanted = set(names) | ({"tokenizer"} if set(names) & set(NEEDS_TOKENIZER) else set())
    return [name for name in EXPORTERS if name in wanted]


__all__ = [
    "EXPORTERS",
    "ExportContext",
    "ExportError",
    "Exporter",
    "completed",
    "exports_to_build",
    "run_export",
]
