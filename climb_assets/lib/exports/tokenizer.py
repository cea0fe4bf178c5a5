"""The training tokenizer as a folder `transformers.AutoTokenizer.from_pretrained` loads.

Megatron-LM's `--tokenizer-type HuggingFaceTokenizer --tokenizer-model <folder>` and NeMo load
exactly that, and take the end-of-document id from the tokenizer's `eos_token_id`: it is set here
to the id the megatron export appends after every document, so the two always agree (a bare
`tokenizer.json` carries no `eos_token`, and `AutoTokenizer` then reports None).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from climb_assets.lib import tokens
from climb_assets.lib.exports.base import ExportContext, Exporter, ExportError

CONFIG_TOKENS = ("bos_token", "unk_token", "pad_token")
"""Special tokens carried over from a model folder's own `tokenizer_config.json`."""


def _source_config(source: str) -> dict[str, Any]:
    """The `tokenizer_config.json` of a local model folder, else empty."""
    path = Path(source).expanduser()
    config = path / "tokenizer_config.json" if path.is_dir() else None
    if config is None or not config.is_file():
        return {}
    return json.loads(config.read_text())


class TokenizerExport(Exporter):
    """`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`, EOS set.

    The config names `PreTrainedTokenizerFast`, which transformers 4 and 5 both load (a config
    saved by transformers 5 names a class 4 does not have), so the folder works in the training
    stack's own environment.
    """

    name = "tokenizer"

    def write(self, ctx: ExportContext, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        if ctx.tokenizer is None:
            raise ExportError(
                "the tokenizer export needs a training tokenizer (manifest.tokenizer)"
            )
        fast = tokens.load_tokenizer(ctx.tokenizer)
        eod = tokens.eos_id(fast)
        eos_token = fast.id_to_token(eod)
        source = _source_config(ctx.tokenizer)
        special = {k: source[k] for k in CONFIG_TOKENS if isinstance(source.get(k), str)}
        special["eos_token"] = eos_token  # the id the data ends each document with
        (out / "tokenizer.json").write_text(fast.to_str())
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            "model_max_length": ctx.seq_length,
            "clean_up_tokenization_spaces": False,
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from transformers import AutoTokenizer
        check = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
        if check.eos_token_id != eod:
            raise ExportError(
                f"the exported tokenizer loads with eos_token_id {check.eos_token_id}, not the "
                f"end-of-document id {eod} of the data; set manifest.tokenizer to a tokenizer "
                f"whose {eos_token!r} is a special token"
            )
        log(f"export tokenizer: {len(check):,} ids, eos {eos_token!r} (id {eod})")
        return {
            "tokenizer": ctx.tokenizer_note,
            "vocab_size": len(check),
            "eos_token": eos_token,
            "eod_id": eod,
            "model_max_length": ctx.seq_length,
            "load": "transformers.AutoTokenizer.from_pretrained(<this folder>)",
        }
