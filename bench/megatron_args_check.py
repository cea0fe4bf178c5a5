"""The README's Megatron-LM command, parsed and validated by Megatron-LM's own argument code.

Megatron-LM's `megatron/training` is not on PyPI (megatron-core is), so this check needs a
checkout: `git clone --branch core_v0.16.1 https://github.com/NVIDIA/Megatron-LM`. It takes the
`pretrain_gpt.py` command of the README's "From `climb run` to the first training step" section,
puts the flags of a `megatron_args.txt` (an export's, or an example with two super-clusters) in
place of `$(cat megatron_args.txt)`, and runs `megatron.training.arguments.parse_args` and
`validate_args` (world size 8, as `--nproc-per-node 8`), the code `pretrain_gpt.py` runs first.
One module that needs triton (`batch_invariant_kernels`) is stubbed, as nothing here runs a
kernel. Then it builds megatron-core's dataset config from the parsed blends as
`pretrain_gpt.py`'s `core_gpt_dataset_config_from_args` does (`split` and `blend_per_split`
together are refused there, not by the parser).

Run: `.venv/bin/python -m bench.megatron_args_check --megatron-lm ../Megatron-LM
[--args-file <root>/exports/megatron/megatron_args.txt]`; writes
`bench/results/megatron_args_check.json`.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import json
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_ARGS = (
    "--train-data-path 0.6 sc_000 0.4 sc_002 --valid-data-path 0.6 valid/sc_000 0.4 valid/sc_002 "
    "--tokenizer-type HuggingFaceTokenizer --tokenizer-model ../tokenizer --seq-length 2048 "
    "--max-position-embeddings 2048 --global-batch-size 256 --train-samples 4882"
)
PARSED = (
    "train_data_path", "valid_data_path", "split", "tokenizer_type", "tokenizer_model",
    "seq_length", "global_batch_size", "micro_batch_size", "train_samples",
)  # fmt: skip
STUBBED = ("megatron.core.transformer.custom_layers.batch_invariant_kernels",)


class _Stub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `STUBBED` as empty mocks (they need triton, and no kernel runs here)."""

    def find_spec(self, name: str, path: object, target: object = None):
        if name in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = mock.MagicMock(name=spec.name)
        module.__path__, module.__spec__ = [], spec
        return module

    def exec_module(self, module: ModuleType) -> None:
        return None


def readme_command(readme: Path) -> list[str]:
    """The flags of the README's `pretrain_gpt.py` command (continuation lines joined)."""
    text = readme.read_text()
    block = re.search(r"```bash\n([^`]*?pretrain_gpt\.py[^`]*?)```", text)
    if block is None:
        raise SystemExit("no pretrain_gpt.py command in a bash block of the README")
    line = next(ln for ln in block[1].replace("\\\n", " ").splitlines() if "pretrain_gpt.py" in ln)
    words = shlex.split(line)
    return words[words.index(next(w for w in words if w.endswith("pretrain_gpt.py"))) + 1 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megatron-lm", type=Path, required=True, help="a Megatron-LM checkout")
    parser.add_argument("--args-file", type=Path, help="an export's megatron_args.txt")
    parser.add_argument("--label", help="what the checkout is, when it is not a git clone")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/megatron_args_check.json")
    opts = parser.parse_args()
    checkout = opts.megatron_lm.resolve()
    flags = opts.args_file.read_text().split() if opts.args_file else EXAMPLE_ARGS.split()
    words = readme_command(ROOT / "README.md")
    at = words.index("$(cat")
    argv = [*words[:at], *flags, *words[at + 2 :]]  # `$(cat megatron_args.txt)` is two words
    sys.path.insert(0, str(checkout))
    sys.meta_path.insert(0, _Stub())
    warnings.simplefilter("ignore")
    from megatron.core.datasets.blended_megatron_dataset_config import (
        BlendedMegatronDatasetConfig,
    )
    from megatron.core.datasets.utils import get_blend_from_list
    from megatron.training.arguments import parse_args, validate_args

    sys.argv = ["pretrain_gpt.py", *argv]
    args = parse_args()
    args.world_size, args.rank = 8, 0
    validate_args(args)
    blend_per_split = [
        get_blend_from_list(args.train_data_path),
        get_blend_from_list(args.valid_data_path),
        get_blend_from_list(args.test_data_path),
    ]
    BlendedMegatronDatasetConfig(
        random_seed=args.seed, sequence_length=args.seq_length, blend=None,
        blend_per_split=blend_per_split, split=args.split, tokenizer=None,
    )  # fmt: skip
    described = subprocess.run(
        ["git", "-C", str(checkout), "describe", "--tags", "--always"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    result = {
        "megatron_lm": opts.label or described or str(checkout),
        "argv": argv,
        "parsed": {k: getattr(args, k) for k in PARSED},
        "ok": True,
    }
    opts.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['megatron_lm']}: the README's command parses and validates; {opts.out}")


if __name__ == "__main__":
    main()
