"""Megatron-LM / NeMo: indexed datasets (`.bin` + `.idx`) per super-cluster, and the blends.

`sc_NNN` holds each training document of super-cluster NNN once (the manifest's first pass); the
repetition the budget asks for comes from the blend: its weights are the shares of the
manifest's training tokens, so Megatron's own epochs over a prefix give each super-cluster its
granted tokens when the run trains on `train_samples` sequences (`megatron_args.txt`).
`valid/sc_NNN` holds the manifest's validation documents (never in a training prefix), blended
by the same weights. Each document is tokenized with the training tokenizer, end-of-document
appended, one sequence per document, as megatron-core's `tools/preprocess_data.py` does. The
files are byte for byte what megatron-core's `IndexedDatasetBuilder` writes (the tests compare
them), but written by `IndexedDatasetWriter` here, which needs numpy only: importing megatron-
core costs a process about 8 s of CPU (torch), more than a worker's share of a small export. The
index dtype is megatron-core's choice for the vocabulary (`DType.optimal_dtype`: uint16 below
65,500 ids, else int32). `train_blend.txt` and `valid_blend.txt` are the `--train-data-path` and
`--valid-data-path` values with prefixes relative to this folder; `*.absolute.txt` carry
absolute prefixes; `blend.json` all, with the weights. `megatron_args.txt` (relative to this
folder) and `megatron_args.absolute.txt` are the data, tokenizer and length arguments of
`pretrain_gpt.py`.

Parallelism: super-clusters are shared out among `ExportContext.export_workers` processes
(`spawn`ed; each tokenizes on its share of the CPUs, one thread when there are as many workers
as CPUs), heaviest first onto the least loaded worker by granted tokens. Each worker streams the
manifest parts once (`super_cluster_id`, `pass` and `text` only, a batch of rows at a time) and
owns the whole files of its super-clusters, so every `.bin`/`.idx` is written by one process in
the manifest's document order and the result does not depend on the number of workers. One
worker runs in this process, with the tokenizer's own threads. The speed-up is bounded by the
heaviest worker's share of the tokens (a super-cluster is never split).

`write_super_cluster` (and `write_super_clusters`, for several in one pass) is a plain function
of the store, the parts and the tokenizer: a Dagster asset partitioned by super-cluster, spread
over pods by a Kubernetes executor, can call it per partition and write the blend afterwards.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import current_process, get_context
from pathlib import Path
from typing import Any

import numpy as np

from climb_assets.lib import tokens
from climb_assets.lib.exports.base import ExportContext, Exporter, ExportError
from climb_assets.lib.machine import usable_cpus
from climb_assets.lib.storage import Store

PARALLEL_MIN_TOKENS = 2_000_000
"""Granted tokens below which an unset `export_workers` writes in-process: a spawned worker takes
about 1.5 s to start (numpy, pyarrow, tokenizers), as long as tokenizing ~0.5M tokens on a core."""
BATCH_ROWS = 8192
"""Rows a worker reads and tokenizes at a time (its memory: one batch of texts and ids)."""

INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {"uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "float64": 6,
               "float32": 7, "uint16": 8}  # fmt: skip
"""megatron-core's `DType` codes (`indexed_dataset.DType`), stored in each `.idx` header."""


def _blend_line(data_path: list[float | str]) -> str:
    return " ".join(f"{x:.6g}" if isinstance(x, float) else x for x in data_path) + "\n"


def prefix_name(super_cluster: int) -> str:
    return f"sc_{super_cluster:03d}"


def _megatron() -> Any:
    """megatron-core's indexed dataset module (its import is noisy without CUDA or Apex)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def index_dtype(vocab_size: int) -> type[np.number]:
    """megatron-core's index dtype for a vocabulary; refuses one that does not fit it."""
    dtype = _megatron().DType.optimal_dtype(vocab_size)
    if vocab_size - 1 > np.iinfo(dtype).max:
        raise ExportError(
            f"the training tokenizer has {vocab_size:,} ids; megatron-core's largest index "
            f"dtype ({np.dtype(dtype).name}) holds ids up to {np.iinfo(dtype).max:,}; use a "
            "tokenizer with a smaller vocabulary"
        )
    return dtype


class IndexedDatasetWriter:
    """One megatron-core indexed dataset, as `IndexedDatasetBuilder.add_document` per document
    and `finalize` write it, built under temporary names and renamed into place when complete.

    Args:
        prefix: The dataset's path without `.bin` / `.idx`.
        dtype: The token dtype (`index_dtype`).
    """

    def __init__(self, prefix: Path, dtype: type[np.number] | str) -> None:
        self.dtype = np.dtype(dtype)
        self.bin = prefix.with_name(f"{prefix.name}.bin")
        self.idx = prefix.with_name(f"{prefix.name}.idx")
        self._tmp_bin = prefix.with_name(f".{prefix.name}.bin.{os.getpid()}.partial")
        self._tmp_idx = prefix.with_name(f".{prefix.name}.idx.{os.getpid()}.partial")
        self._data = open(self._tmp_bin, "wb")  # noqa: SIM115 - closed by finalize or abort
        self._lengths: list[np.ndarray] = []
        self.documents = self.tokens = 0

    def add_documents(self, ids: Sequence[Sequence[int]], eod: int) -> None:
        """Appends one document per id list, each followed by `eod`."""
        if not ids:
            return
        lengths = np.fromiter(map(len, ids), np.int64, len(ids)) + 1
        ends = np.cumsum(lengths)
        flat = np.empty(int(ends[-1]), np.int64)
        body = np.ones(flat.size, bool)
        body[ends - 1] = False
        flat[body] = np.fromiter(itertools.chain.from_iterable(ids), np.int64, flat.size - len(ids))
        flat[ends - 1] = eod
        if flat.min() < 0 or flat.max() > np.iinfo(self.dtype).max:
            raise ExportError(f"a token id does not fit the index dtype {self.dtype.name}")
        self._data.write(flat.astype(self.dtype).tobytes(order="C"))
        self._lengths.append(lengths.astype(np.int32))
        self.documents += len(ids)
        self.tokens += int(ends[-1])

    def finalize(self) -> None:
        """Writes the index (megatron-core's format, version 1) and publishes both files."""
        self._data.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        pointers = np.zeros(lengths.size, np.int64)
        np.cumsum(lengths[:-1].astype(np.int64) * self.dtype.itemsize, out=pointers[1:])
        documents = np.arange(lengths.size + 1, dtype=np.int64)
        with open(self._tmp_idx, "wb") as fh:
            fh.write(INDEX_HEADER)
            fh.write(struct.pack("<Q", 1))
            fh.write(struct.pack("<B", DTYPE_CODES[self.dtype.name]))
            fh.write(struct.pack("<Q", lengths.size))
            fh.write(struct.pack("<Q", documents.size))
            fh.write(lengths.tobytes(order="C"))
            fh.write(pointers.tobytes(order="C"))
            fh.write(documents.tobytes(order="C"))
        os.replace(self._tmp_bin, self.bin)
        os.replace(self._tmp_idx, self.idx)  # the index last: a prefix with one is complete

    def abort(self) -> None:
        """Removes the temporary files of a dataset not finalized (a published one stays)."""
        self._data.close()
        for path in (self._tmp_bin, self._tmp_idx):
            path.unlink(missing_ok=True)


def write_super_clusters(
    store: Store,
    parts: Sequence[str],
    super_clusters: Sequence[int],
    out: str | os.PathLike,
    tokenizer: str,
    dtype: type[np.number] | str,
    batch_rows: int = BATCH_ROWS,
) -> dict[int, tuple[int, int]]:
    """Writes `out/sc_NNN.bin` + `.idx` for each of `super_clusters` in one pass over `parts`.

    Only the rows of the first pass (`pass` 0) are written: each selected document once.

    Args:
        store: The storage root holding the parts.
        parts: Manifest parts (relative paths), in the manifest's order.
        super_clusters: The super-clusters to write; rows of others are skipped.
        out: The local folder to write into.
        tokenizer: Local path of the training tokenizer.
        dtype: The token dtype (`index_dtype` of the tokenizer's vocabulary).
        batch_rows: Rows read and tokenized at a time.

    Returns:
        Documents and tokens (end-of-document included) per super-cluster that has a document;
        one without any writes no file.

    Raises:
        ExportError: Reading, tokenizing or writing failed; the message names the
            super-cluster(s) and the part. No partial file is left behind (a dataset is
            published, under its final name, only when complete).
    """
    tok = tokens.load_tokenizer(tokenizer)
    eod = tokens.eos_id(tok)
    wanted = np.asarray(sorted(set(super_clusters)), dtype=np.int64)
    names = ", ".join(prefix_name(int(sc)) for sc in wanted)
    writers: dict[int, IndexedDatasetWriter] = {}
    rel, sc = "", None
    try:
        for rel in parts:
            sc = None
            columns = ["super_cluster_id", "pass", "text"]
            for batch in store.iter_parquet(rel, columns, batch_rows):
                groups = np.where(
                    batch.column("pass").to_numpy() == 0,
                    batch.column("super_cluster_id").to_numpy(),
                    -1,
                )
                texts = batch.column("text")
                for sc in np.unique(groups[np.isin(groups, wanted)]).tolist():
                    rows = np.flatnonzero(groups == sc)
                    encodings = tok.encode_batch(texts.take(rows).to_pylist())
                    if sc not in writers:
                        writers[sc] = IndexedDatasetWriter(Path(out) / prefix_name(sc), dtype)
                    writers[sc].add_documents([e.ids for e in encodings], eod)
                sc = None
        for sc in list(writers):
            writers[sc].finalize()
    except BaseException as exc:
        for writer in writers.values():
            writer.abort()
        if not isinstance(exc, Exception):
            raise
        what = f"super-cluster {prefix_name(sc)}" if sc is not None else f"super-clusters {names}"
        where = f" (part {rel})" if rel else ""
        detail = " ".join(str(exc).split()) or "no message"
        raise ExportError(
            f"megatron export of {what}{where} failed: {type(exc).__name__}: {detail}"
        ) from exc
    return {sc: (w.documents, w.tokens) for sc, w in writers.items()}


def write_super_cluster(
    store: Store,
    parts: Sequence[str],
    super_cluster: int,
    out: str | os.PathLike,
    tokenizer: str,
    dtype: type[np.number] | str,
) -> tuple[int, int] | None:
    """One super-cluster's indexed dataset (see `write_super_clusters`); None: no document."""
    written = write_super_clusters(store, parts, [super_cluster], out, tokenizer, dtype)
    return written.get(super_cluster)


def balanced_groups(sizes: dict[int, int], workers: int) -> list[list[int]]:
    """Super-clusters shared out: heaviest first, each to the least loaded group (ties: first)."""
    groups: list[list[int]] = [[] for _ in range(min(workers, len(sizes)))]
    load = [0] * len(groups)
    for sc in sorted(sizes, key=lambda s: (-sizes[s], s)):
        i = load.index(min(load))
        groups[i].append(sc)
        load[i] += sizes[sc]
    return [sorted(g) for g in groups if g]


def _init_worker(threads: int) -> None:
    """A worker tokenizes on its share of the CPUs: one thread when there are as many workers."""
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # the Rust tokenizer's thread pool


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancels what has not started and ends running workers, so none writes on after this."""
    pool.shutdown(wait=False, cancel_futures=True)
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
    else:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
    pool.shutdown(wait=True)


def _write_in_workers(groups: list[list[int]], job: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """`write_super_clusters(**job)` of each group in its own spawned process.

    Raises:
        ExportError: The first failure, naming its super-cluster; the other workers are stopped.
    """
    threads = max(1, usable_cpus() // len(groups))
    pool = ProcessPoolExecutor(len(groups), mp_context=get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))  # fmt: skip
    futures: dict[Future[dict[int, tuple[int, int]]], list[int]] = {}
    try:
        for group in groups:
            futures[pool.submit(write_super_clusters, super_clusters=group, **job)] = group
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            raise _worker_error(failed, futures)
    except BaseException:
        _stop(pool)
        for partial in Path(job["out"]).glob(".sc_*.partial"):  # of workers stopped mid-write
            partial.unlink(missing_ok=True)
        raise
    pool.shutdown(wait=True)
    written: dict[int, tuple[int, int]] = {}
    for future in futures:
        written.update(future.result())
    return written


def _worker_error(failed: list[Future[Any]], groups: dict[Future[Any], list[int]]) -> BaseException:
    """The error to raise for failed workers: a worker's own `ExportError` where there is one."""
    errors = [f.exception() for f in failed]
    for exc in errors:
        if isinstance(exc, ExportError):
            return exc  # names its super-cluster; chained to the worker's traceback
    if all(isinstance(exc, BrokenProcessPool) for exc in errors):
        lost = sorted(sc for f, g in groups.items() if f in failed for sc in g)
        names = ", ".join(prefix_name(sc) for sc in lost)
        return ExportError(
            f"megatron export of super-clusters {names} failed: a worker process died "
            "(killed, out of memory?); lower manifest.export_workers, or 1 to run in-process"
        )
    exc = next(e for e in errors if not isinstance(e, BrokenProcessPool))
    names = ", ".join(prefix_name(sc) for sc in groups[failed[errors.index(exc)]])
    detail = " ".join(str(exc).split()) or "no message"
    return ExportError(f"megatron export of super-clusters {names} failed: "
                       f"{type(exc).__name__}: {detail}")  # fmt: skip


def repetitions(store: Store, parts: Sequence[str], n_super: int) -> np.ndarray:
    """Per super-cluster, the manifest's tokens over those of its first pass (1.0: no repeat).

    Counted in the manifest's own tokens (`n_tokens`); the same ratio holds in any tokenizer,
    since every pass repeats documents of the first. 0 where a super-cluster has no row.
    """
    every, first = np.zeros(n_super), np.zeros(n_super)
    for rel in parts:
        table = store.read_parquet(rel, ["super_cluster_id", "pass", "n_tokens"])
        groups = table.column("super_cluster_id").to_numpy()
        n_tokens = table.column("n_tokens").to_numpy().astype(np.float64)
        every += np.bincount(groups, n_tokens, minlength=n_super)
        once = table.column("pass").to_numpy() == 0
        first += np.bincount(groups[once], n_tokens[once], minlength=n_super)
    return np.divide(every, first, out=np.zeros(n_super), where=first > 0)


def pretrain_args(
    train: list[float | str],
    valid: list[float | str],
    tokenizer: str,
    seq_length: int,
    global_batch_size: int,
    train_samples: int,
) -> str:
    """The data, tokenizer and length arguments of Megatron-LM's `pretrain_gpt.py`.

    Separate train and validation blends (Megatron-LM refuses `--split` beside them); every flag
    is one of `megatron/training/arguments.py` at core_v0.16.1.
    """
    args = ["--train-data-path", _blend_line(train).strip()]
    if valid:
        args += ["--valid-data-path", _blend_line(valid).strip()]
    args += [
        "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer,
        "--seq-length", str(seq_length), "--max-position-embeddings", str(seq_length),
        "--global-batch-size", str(global_batch_size), "--train-samples", str(train_samples),
    ]  # fmt: skip
    return " ".join(args) + "\n"


class MegatronExport(Exporter):
    """`.bin`/`.idx` per super-cluster (training and validation) with the blends and arguments."""

    name = "megatron"

    def write(self, ctx: ExportContext, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        if ctx.tokenizer is None:
            raise ExportError("the megatron export needs a training tokenizer (manifest.tokenizer)")
        tok = tokens.load_tokenizer(ctx.tokenizer)
        eod = tokens.eos_id(tok)
        vocab = tok.get_vocab_size()
        dtype = index_dtype(vocab)
        n_super = len(ctx.weights)
        candidates = {sc: int(ctx.granted_tokens[sc]) for sc in range(n_super)
                      if ctx.weights[sc] > 0}  # fmt: skip
        workers = ctx.export_workers
        if workers is None:
            small = sum(candidates.values()) < PARALLEL_MIN_TOKENS
            workers = 1 if small else usable_cpus()
        groups = balanced_groups(candidates, workers)
        if len(groups) > 1 and current_process().daemon:
            log("export megatron: this is a daemonic process, which may not start workers; "
                "writing in-process")  # fmt: skip
            groups = [sorted(candidates)]
        start = time.perf_counter()
        job = {"store": ctx.store, "parts": list(ctx.parts), "out": str(out),
               "tokenizer": ctx.tokenizer, "dtype": np.dtype(dtype).name}  # fmt: skip
        if len(groups) > 1:
            written = _write_in_workers(groups, job)
        else:
            written = write_super_clusters(super_clusters=sorted(candidates), **job)
        seconds = time.perf_counter() - start
        present = [sc for sc in range(n_super) if sc in written]
        # A weight so small that its budget is below half a document selects nothing; it has
        # no dataset to point at, so it leaves the blend (Megatron renormalises the rest).
        empty = {
            prefix_name(sc): float(ctx.weights[sc])
            for sc in range(n_super)
            if ctx.weights[sc] > 0 and sc not in present
        }
        if empty:
            log(f"export megatron: no selected document for {empty} (weights too small for the "
                "token budget); left out of the blend")  # fmt: skip
        if not present:
            raise ExportError("no super-cluster has a selected document; nothing to export")
        valid_written: dict[int, tuple[int, int]] = {}
        if ctx.validation_parts:
            (out / "valid").mkdir()
            valid_written = write_super_clusters(
                ctx.store, ctx.validation_parts, present, out / "valid", ctx.tokenizer, dtype
            )
        repeats = repetitions(ctx.store, ctx.parts, n_super)
        # What training reads from each prefix: its documents as often as the manifest's passes.
        training = {sc: written[sc][1] * float(repeats[sc]) for sc in present}
        total = sum(training.values())
        blend_weight = {sc: training[sc] / total for sc in present}
        train_samples = int(total // ctx.seq_length)
        published = ctx.store.uri("exports/megatron")
        blends: dict[str, list[float | str]] = {"train": [], "valid": []}
        for sc in present:
            blends["train"] += [round(blend_weight[sc], 8), prefix_name(sc)]
            if sc in valid_written:
                blends["valid"] += [round(blend_weight[sc], 8), f"valid/{prefix_name(sc)}"]
        absolute = {
            k: [x if isinstance(x, float) else f"{published}/{x}" for x in b]
            for k, b in blends.items()
        }
        for split in ("train", "valid"):
            if blends[split]:
                (out / f"{split}_blend.txt").write_text(_blend_line(blends[split]))
                (out / f"{split}_blend.absolute.txt").write_text(_blend_line(absolute[split]))
        (out / "blend.json").write_text(json.dumps({
            "train_data_path": blends["train"], "valid_data_path": blends["valid"],
            "train_data_path_absolute": absolute["train"],
            "valid_data_path_absolute": absolute["valid"],
        }, indent=2))  # fmt: skip
        shape = (ctx.seq_length, ctx.global_batch_size, train_samples)
        tokenizer_folder = ctx.store.uri("exports/tokenizer")
        (out / "megatron_args.txt").write_text(
            pretrain_args(blends["train"], blends["valid"], "../tokenizer", *shape)
        )
        (out / "megatron_args.absolute.txt").write_text(
            pretrain_args(absolute["train"], absolute["valid"], tokenizer_folder, *shape)
        )
        summary = {
            "tokenizer": ctx.tokenizer_note,
            "tokenizer_folder": tokenizer_folder,
            "vocab_size": vocab,
            "eod_id": eod,
            "dtype": np.dtype(dtype).name,
            "tokens": sum(written[sc][1] for sc in present),
            "training_tokens": round(total),
            "seq_length": ctx.seq_length,
            "global_batch_size": ctx.global_batch_size,
            "train_samples": train_samples,
            "train_iters": -(-train_samples // ctx.global_batch_size),
            "validation_tokens": sum(v[1] for v in valid_written.values()),
            "tokens_per_second": round(total / seconds, 1) if seconds > 0 else None,
            "workers": len(groups),
            "super_clusters": {
                prefix_name(sc): {
                    "weight": float(ctx.weights[sc]),
                    "blend_weight": blend_weight[sc],
                    "documents": written[sc][0],
                    "tokens": written[sc][1],
                    "epochs": float(repeats[sc]),
                    "training_tokens": round(training[sc]),
                    "granted_tokens": int(ctx.granted_tokens[sc]),
                    "validation_documents": valid_written.get(sc, (0, 0))[0],
                    "validation_tokens": valid_written.get(sc, (0, 0))[1],
                }
                for sc in present
            },
            "train_data_path": blends["train"],
            "valid_data_path": blends["valid"],
            "left_out_without_documents": empty,
        }
        log(
            f"export megatron: {len(present)} training and {len(valid_written)} validation "
            f"indexed datasets, {summary['tokens']:,} tokens written for "
            f"{summary['training_tokens']:,} trained ({train_samples:,} sequences of "
            f"{ctx.seq_length}), {len(groups)} worker(s)"
        )
        return summary
