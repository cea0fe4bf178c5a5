"""Shard ingestion: `corpus_documents`' streaming reader against `polars.read_ndjson`.

A `.jsonl.zst` shard of real text (the demo corpus's documents, repeated under new ids until the
decompressed size is reached) is written once per size. Then, side by side in one run, each in a
fresh process so that peak memory is its own:

- ours: `climb_assets.lib.corpus.ingest_shard` on the compressed shard: zstd decompression as the
  bytes stream in, `pyarrow.json` blocks, every row validated (UTF-8, ids, duplicates, length
  cap), clean documents written to Parquet batch by batch;
- baseline: `polars.read_ndjson` on the same shard already decompressed (the decompression is
  not timed), which parses only, into one in-memory frame.

Reported per size: decompressed MB/s of each, the ratio ours/baseline of the throughputs, and
the peak resident memory of each process above its state after imports (what reading added).

Run: `.venv/bin/python -m bench.ingestion [--sizes-mb 1024 4096] [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import QUICK_DIR, RESULTS_DIR, add_run_options, load_average, write_result

NAME = "ingestion"


def write_shard(path: Path, size_mb: int, seed: int = 0) -> dict[str, Any]:
    """Writes `path` (.jsonl.zst) of about `size_mb` decompressed MB of real documents."""
    import zstandard

    from climb_assets.lib.demo_corpus import build_demo_corpus

    with tempfile.TemporaryDirectory() as tmp:
        info = build_demo_corpus(tmp, docs_per_source=1000, heldout_per_source=1)
        import polars as pl

        files = sorted(info.root.glob("corpus/*.parquet"))
        texts = pl.concat([pl.read_parquet(p, columns=["text"]) for p in files])["text"].to_list()
    target, written, n = size_mb << 20, 0, 0
    cctx = zstandard.ZstdCompressor(level=3, threads=-1)
    with open(path, "wb") as raw, cctx.stream_writer(raw) as out:
        while written < target:
            line = json.dumps({"doc_id": f"doc-{n}", "text": texts[n % len(texts)]}) + "\n"
            data = line.encode()
            out.write(data)
            written += len(data)
            n += 1
    return {"documents": n, "decompressed_bytes": written, "compressed_bytes": path.stat().st_size}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(kind: str, path: str, out_dir: str) -> dict[str, float]:
    """One measurement in this process: seconds and peak RSS above the post-import level."""
    import polars as pl

    from climb_assets.lib.corpus import CorpusOptions, ingest_shard
    from climb_assets.lib.storage import Store

    base = _rss_mb()
    start = time.perf_counter()
    if kind == "ours":
        shard = Path(path)
        result = ingest_shard(
            Store(str(shard.parent)), shard.name, CorpusOptions(), Store(out_dir),
            "docs.parquet", "rejects.parquet",
        )  # fmt: skip
        rows = result.documents
    else:
        rows = pl.read_ndjson(path).height
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": rows, "peak_rss_mb_added": _rss_mb() - base}


def _measure(kind: str, path: Path, out_dir: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.ingestion", "--worker", kind, str(path), str(out_dir)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument(
        "--worker", nargs=3, metavar=("KIND", "PATH", "OUT"), help=argparse.SUPPRESS
    )
    add_run_options(parser)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0
    sizes = [32, 128] if args.quick else args.sizes_mb
    runs, summary = [], []
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="climb-ingest-") as tmp:
        for size in sizes:
            shard = Path(tmp) / f"shard-{size}.jsonl.zst"
            info = write_shard(shard, size)
            plain = Path(tmp) / f"shard-{size}.jsonl"
            _decompress(shard, plain)
            mb = info["decompressed_bytes"] / 2**20
            ours = _measure("ours", shard, Path(tmp) / f"out-{size}")
            base = _measure("polars", plain, Path(tmp) / f"base-{size}")
            plain.unlink()
            shard.unlink()
            run = {"size_mb": round(mb, 1), **info, "ours": ours, "polars_read_ndjson": base,
                   "ours_mb_s": mb / ours["seconds"],
                   "polars_mb_s": mb / base["seconds"]}  # fmt: skip
            runs.append(run)
            print(json.dumps(run), flush=True)
            summary.append({
                "what": f"MB/s reading a {mb / 1024:.1f} GB .jsonl.zst shard into clean "
                        "documents (ratio ours/polars)",
                "ours": f"{run['ours_mb_s']:.1f} MB/s, peak +{ours['peak_rss_mb_added']:.0f} MB",
                "baseline": f"polars.read_ndjson (decompressed) {run['polars_mb_s']:.1f} MB/s, "
                            f"peak +{base['peak_rss_mb_added']:.0f} MB",
                "ratio": round(run["ours_mb_s"] / run["polars_mb_s"], 3),
            })  # fmt: skip
    write_result(
        NAME,
        {"description": __doc__.splitlines()[0], "runs": runs, "summary": summary,
         "load_average_start": load_start},
        QUICK_DIR if args.quick else RESULTS_DIR,
    )  # fmt: skip
    return 0


def _decompress(src: Path, dst: Path) -> None:
    import zstandard

    with open(src, "rb") as fin, open(dst, "wb") as fout:
        zstandard.ZstdDecompressor().copy_stream(fin, fout)


if __name__ == "__main__":
    sys.exit(main())
