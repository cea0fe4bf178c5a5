"""Cost planner: what a search will cost, estimated before launching it.

From a profile and a corpus size, `plan` estimates the FLOPs of every expensive stage (embedding,
k-means fit, k-means assignment, proxy training and evaluation) and turns them into device-hours
and wall-clock with throughput figures that the benchmarks measured (`bench/results/*.json`):

- GPU figures come from a measured `gpu-<name>.json` where one exists;
- otherwise a GPU stage runs at a stated share of a stated peak (`PlanOptions`), and the CPU
  measurements give the per-document arithmetic (tokens per document, padding) and the CPU rates.

FLOP conventions: an encoder does 2 x its non-embedding parameters per token (embedding lookups
multiply nothing); one k-means distance pass does 2 x N x K x d; a proxy does 6 x its parameters
per trained token and 2 x per evaluated token (all parameters, tied output layer included;
attention scores left out, as in the usual model-FLOP-utilization convention). Every assumption
is listed in `Plan.assumptions` with where it came from.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from climb_assets.config import Profile, deployment_kind

if TYPE_CHECKING:
    from climb_assets.lib.proxy import ProxyConfig

RESULTS_ENV = "CLIMB_BENCH_RESULTS"
CPU_FILES = ("embedding.json", "kmeans.json", "proxy_overhead.json")
DEFAULT_TOKENS_PER_DOC = 1000.0
DEFAULT_TARGET_TOKENS = 1.5e6
"""Tokens scored per target when its file is not readable here: about the mean of the paper's
PIQA, ARC-Easy and HellaSwag validation splits with every choice scored after its context."""
CHARS_PER_TOKEN = 4.0
SPECIAL_TOKENS = 2  # [CLS] and [SEP] of BERT-style encoders

# Dense peak FLOP/s by GPU name (first match wins): (16-bit tensor cores, FP32 without them).
GPU_PEAKS: tuple[tuple[str, str, float, float], ...] = (
    (r"h100.*pcie", "NVIDIA H100 PCIe", 756e12, 51e12),
    (r"h100|h200", "NVIDIA H100 SXM / H200", 989e12, 67e12),
    (r"a100", "NVIDIA A100", 312e12, 19.5e12),
    (r"l40s", "NVIDIA L40S", 362e12, 91.6e12),
    (r"\bl4\b", "NVIDIA L4", 121e12, 30.3e12),
)
DEFAULT_GPU = "H100 SXM"

# Encoders whose folder is not local: (non-embedding parameters, all parameters, output dim).
KNOWN_ENCODERS: dict[str, tuple[int, int, int]] = {
    # BERT 6 x 384 (counted from the bundled safetensors)
    "all-MiniLM-L6-v2": (10_795_392, 22_713_216, 384),
    # gte-large-en-v1.5 architecture: 24 x 1024, GLU MLP of 4096, vocabulary 30,528 (~435M)
    "stella_en_400M_v5": (403_070_976, 435_000_000, 1024),
}


class PlanError(ValueError):
    """A plan that cannot be made as asked (missing figures, unknown sizes)."""


def peak_flops(gpu_name: str) -> tuple[str, float, float] | None:
    """(table label, 16-bit dense peak, FP32 peak) in FLOP/s for a GPU name, or None if unknown."""
    for pattern, label, bf16, fp32 in GPU_PEAKS:
        if re.search(pattern, gpu_name, re.IGNORECASE):
            return label, bf16, fp32
    return None


def results_dir(folder: str | Path | None = None) -> Path:
    """`folder`, else `$CLIMB_BENCH_RESULTS`, else `bench/results` next to the package."""
    if folder is not None:
        return Path(folder)
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV])
    import climb_assets

    return Path(climb_assets.__file__).resolve().parents[1] / "bench" / "results"


@dataclass(frozen=True)
class Rate:
    """Achieved FLOP/s of one kind of work on one device, and where the figure comes from."""

    flops_per_s: float
    source: str
    """A result file, or `assumption`."""
    detail: str


@dataclass(frozen=True)
class GpuFigures:
    """Measured GPU figures from one `gpu-<name>.json` (a section is None when not recorded)."""

    name: str
    path: str
    encoder_flops_per_s: float | None
    lloyd_flops_per_s: float | None
    proxy_runs: tuple[tuple[int, float], ...]
    """(parameters, achieved model FLOP/s) of every measured proxy preset."""
    detail: dict[str, str]


@dataclass(frozen=True)
class BenchFigures:
    """The measured CPU rates (per core) and, where recorded, GPU figures."""

    folder: str
    encoder_per_core: Rate
    padding_efficiency: float
    lloyd_per_core: Rate
    seeding: Rate
    """k-means++ seeding (host CPU, whole benchmark machine; numpy, barely parallel)."""
    assign_per_core: Rate
    proxy_per_core: Rate
    warnings: tuple[str, ...]
    gpus: tuple[GpuFigures, ...]
    greedy_seeding: Rate | None = None
    """Greedy k-means++ seeding on a subsample (host CPU), where the benchmark recorded it."""
    steps: tuple[StepCost, ...] = ()
    """CPU seconds per document of the steps `bench/scale.py` timed, where it ran."""


@dataclass(frozen=True)
class StepCost:
    """A step's CPU seconds per document (its workers included), from `bench/scale.py`."""

    step: str
    cpu_seconds_per_doc: float
    source: str
    detail: str


SCALE_FILE = "scale.json"
MEASURED_NOT_ESTIMATED = (
    "the manifest and exports (they grow with manifest.total_tokens, not the corpus), predictor "
    "fits and candidate scoring (seconds), queueing"
)
SCALED_STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ingestion", ("corpus_documents",)),
    ("quality scoring", ("cluster_quality",)),
    ("pruning + catalog", ("pruned_clusters", "super_clusters", "cluster_catalog")),
    ("tokens + targets",
     ("proxy_tokenizer", "cluster_tokens", "search_targets", "target_alignment")),
)  # fmt: skip
"""Plan rows costed per document from the scale benchmark, and the steps each one sums."""


def seeding_flops(init: str, sample: float, k: int, d: int) -> float:
    """FLOPs of the k-means seeding `fit_kmeans` runs for `init` on `sample` rows."""
    from climb_assets.lib.kmeans import SEEDING_POINTS_PER_CENTROID

    if init == "kmeans++":
        return 2.0 * sample * k * d
    if init == "greedy_kmeans++":
        rows = min(sample, k * SEEDING_POINTS_PER_CENTROID)
        return 2.0 * rows * k * d * (2 + int(math.log(k)))
    return 0.0


@dataclass(frozen=True)
class EncoderSize:
    """The parameters that multiply per token, and the embedding dimension."""

    params: int
    total_params: int
    dim: int
    source: str


@dataclass(frozen=True)
class CorpusSize:
    """Corpus tokens and documents; `derived` names the one computed from the other."""

    tokens: float
    documents: float
    tokens_per_doc: float
    derived: str

    @classmethod
    def of(
        cls,
        tokens: float | None = None,
        documents: float | None = None,
        tokens_per_doc: float = DEFAULT_TOKENS_PER_DOC,
    ) -> CorpusSize:
        """From tokens and/or documents; the missing one via `tokens_per_doc`."""
        if tokens is None and documents is None:
            raise PlanError("give the corpus size: --tokens (e.g. 1.2e12) and/or --documents")
        for name, value in (("tokens", tokens), ("documents", documents)):
            if value is not None and not value > 0:
                raise PlanError(f"corpus {name} must be > 0, got {value}")
        if not tokens_per_doc > 0:
            raise PlanError(f"tokens per document must be > 0, got {tokens_per_doc}")
        if tokens is not None and documents is not None:
            return cls(tokens, documents, tokens / documents, "tokens per document")
        if tokens is not None:
            return cls(tokens, tokens / tokens_per_doc, tokens_per_doc, "documents")
        assert documents is not None
        return cls(documents * tokens_per_doc, documents, tokens_per_doc, "tokens")


@dataclass(frozen=True)
class PlanOptions:
    """Where the plan runs and the assumptions a user may change (None: see each field)."""

    device: Literal["gpu", "cpu"] = "gpu"
    gpus: int | None = None
    """None: 1 for a local deployment, else the profile's deployment.max_concurrent."""
    cpu_cores: int = 16
    """Cores for the CPU stages (k-means assignment, k-means++ seeding; all with device cpu)."""
    gpu_type: str | None = None
    """None: the GPU of the first measured gpu-*.json, else an H100 SXM."""
    peak_tflops: float | None = None
    """16-bit dense tensor peak; None: from the GPU table."""
    peak_fp32_tflops: float | None = None
    encoder_util: float = 0.30
    kmeans_util: float = 0.50
    proxy_mfu: float = 0.25
    encoder_params: float | None = None
    eval_tokens: float | None = None
    """Tokens scored per proxy evaluation; None: from the target files, else a default."""
    vocab_size: int | None = None


@dataclass(frozen=True)
class Stage:
    """One row of the plan: FLOPs, device-hours (GPU-h, or CPU core-h) and wall-clock."""

    name: str
    runs_on: Literal["GPU", "CPU"]
    flops: float
    device_hours: float
    wall_hours: float
    rate: str
    """Source of the throughput figure."""
    note: str = ""
    in_total: bool = True


@dataclass(frozen=True)
class Assumption:
    """One figure the plan rests on and where it comes from."""

    what: str
    value: str
    source: str


@dataclass(frozen=True)
class Plan:
    """The estimate: one row per stage, the totals and every assumption."""

    profile: str
    device: str
    gpus: int
    cpu_cores: int
    corpus: CorpusSize
    stages: tuple[Stage, ...]
    assumptions: tuple[Assumption, ...]
    not_estimated: str = (
        "quality scoring, proxy tokenizer training, tokenizing the kept clusters (all CPU), "
        "cluster merge, predictor fits and candidate scoring (seconds), storage I/O, queueing"
    )
    """What the plan leaves out (`MEASURED_NOT_ESTIMATED` when the scale benchmark ran)."""
    gpu_hours: float = field(init=False)
    cpu_core_hours: float = field(init=False)
    wall_hours: float = field(init=False)

    def __post_init__(self) -> None:
        counted = [s for s in self.stages if s.in_total]
        gpu = sum(s.device_hours for s in counted if s.runs_on == "GPU")
        object.__setattr__(self, "gpu_hours", gpu)
        cpu = sum(s.device_hours for s in counted if s.runs_on == "CPU")
        object.__setattr__(self, "cpu_core_hours", cpu)
        object.__setattr__(self, "wall_hours", sum(s.wall_hours for s in counted))

    def stage(self, name: str) -> Stage:
        """The row called `name` (KeyError if none)."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return json.loads(json.dumps(asdict(self)))

    def render(self) -> str:
        """The table, the totals and the assumptions as text."""
        lines = [
            f"climb plan: profile {self.profile}, {self.device}; wall-clock with {self.gpus} "
            f"GPU(s) and {self.cpu_cores} CPU cores",
            f"corpus: {self.corpus.tokens:.4g} tokens, {self.corpus.documents:.4g} documents, "
            f"{self.corpus.tokens_per_doc:,.0f} tokens/document ({self.corpus.derived} derived)",
            "",
            f"{'stage':<22} {'on':<3} {'FLOPs':>8} {'device-hours':>14} {'wall-clock':>17}  "
            "throughput from",
        ]
        for s in self.stages:
            unit = "GPU-h" if s.runs_on == "GPU" else "core-h"
            lines.append(
                f"{s.name:<22} {s.runs_on:<3} {s.flops:>8.3g} {_num(s.device_hours):>7} {unit:<6}"
                f" {format_hours(s.wall_hours):>17}  {s.rate}"
            )
            if s.note:
                lines.append(f"{'':<27}{s.note}")
        lines += [
            f"{'total':<22} {'':<3} {'':>8} {_num(self.gpu_hours):>7} GPU-h  "
            f"{format_hours(self.wall_hours):>17}  (per-proxy rows not added)",
            f"{'':<22} {'':<3} {'':>8} {_num(self.cpu_core_hours):>7} core-h",
            "",
            "Assumptions:",
        ]
        lines += [f"  - {a.what}: {a.value}  [{a.source}]" for a in self.assumptions]
        lines.append(f"Not estimated: {self.not_estimated}.")
        return "\n".join(lines)


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def format_hours(h: float) -> str:
    """Hours as a person reads them: seconds, minutes, hours or days."""
    if h < 1 / 60:
        return f"{h * 3600:.1f} s"
    if h < 1:
        return f"{h * 60:.1f} min"
    if h < 48:
        return f"{h:.1f} h"
    return f"{h:,.0f} h ({h / 24:,.1f} d)"


def _tflops(value: float) -> str:
    return f"{value / 1e12:,.3g} TFLOP/s"


# ------------------------------------------------------------------------------------------
# Sizes
# ------------------------------------------------------------------------------------------


def proxy_config(profile: Profile) -> ProxyConfig:
    """The profile's preset with the keys it sets (same rule as the search assets)."""
    from climb_assets.lib.proxy import ProxyConfig, proxy_preset

    names = {f.name for f in fields(ProxyConfig)}
    overrides = {
        f.name: getattr(profile.proxy, f.name)
        for f in fields(profile.proxy)
        if f.name in names and getattr(profile.proxy, f.name) is not None
    }
    return proxy_preset(profile.proxy.preset, **overrides)


def proxy_parameters(cfg: ProxyConfig, vocab_size: int) -> int:
    """Parameters of `build_model(cfg, vocab_size)` by arithmetic (= `count_parameters`).

    Token embeddings are counted once (tied with the output layer); GPT-2 adds learned positions.
    """
    d, layers = cfg.n_embd, cfg.n_layer
    if cfg.arch == "gpt2":
        return vocab_size * d + cfg.seq_len * d + layers * (12 * d * d + 13 * d) + 2 * d
    ffn = 32 * math.ceil(8 * d / 3 / 32)
    return vocab_size * d + layers * (4 * d * d + 3 * d * ffn + 2 * d) + d


_EMBEDDING_TENSOR = re.compile(r"(_embeddings|embed_tokens|wte|wpe)\.weight$")


def _safetensors_counts(folder: Path) -> tuple[int, int] | None:
    """(all, embedding) parameter counts from the headers of a folder's *.safetensors."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = embedding = 0
    for path in files:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, spec in header.items():
            if name == "__metadata__" or not str(spec.get("dtype", "")).startswith(("F", "BF")):
                continue
            count = math.prod(spec["shape"])
            total += count
            if _EMBEDDING_TENSOR.search(name):
                embedding += count
    return total, embedding


def static_dim(model: str) -> int:
    """The dimension of a static model folder (its config's `hidden_dim`), else 256."""
    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        try:
            return int(json.loads(config.read_text(encoding="utf-8"))["hidden_dim"])
        except (KeyError, TypeError, ValueError):
            pass
    return 256


def encoder_size(model: str, params: float | None = None) -> EncoderSize:
    """Parameter count and dimension of an encoder: a local folder, else `KNOWN_ENCODERS`.

    Raises:
        PlanError: A hub id that is neither local nor known, and no `params` given.
    """
    from climb_assets.lib.embed import resolve_model_source

    source = resolve_model_source(model)
    folder = Path(source)
    if (folder / "config.json").is_file():
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        dim = int(config["hidden_size"])
        counts = _safetensors_counts(folder)
        if counts is not None:
            total, embedding = counts
            how = f"{folder} (safetensors headers)"
        else:
            ff = int(config.get("intermediate_size", 4 * dim))
            embedding = int(config.get("vocab_size", 0)) * dim
            total = int(config["num_hidden_layers"]) * (4 * dim * dim + 2 * dim * ff) + embedding
            how = f"{folder / 'config.json'} (layers x (4d^2 + 2 d ff))"
        size = EncoderSize(total - embedding, total, dim, how)
    else:
        known = KNOWN_ENCODERS.get(model.rstrip("/").split("/")[-1])
        if known is None and params is None:
            raise PlanError(
                f"encoder '{model}' is not a local folder and not in the planner's table "
                f"({', '.join(KNOWN_ENCODERS)}); give its parameter count with --encoder-params"
            )
        ne, total, dim = known or (0, 0, 1024)
        size = EncoderSize(ne, total, dim, "built-in table (climb_assets/lib/planner.py)")
    if params is not None:
        size = EncoderSize(int(params), int(params), size.dim, "--encoder-params")
    return size


def eval_tokens_per_proxy(profile: Profile) -> tuple[float, str]:
    """Tokens a proxy scores per evaluation: read from local target files, else a default each."""
    total, sources = 0.0, []
    for t in profile.targets:
        path = Path(t.path).expanduser()
        if not path.is_file() or path.suffix == ".parquet":
            total += DEFAULT_TARGET_TOKENS
            sources.append(f"{t.name}: {DEFAULT_TARGET_TOKENS:.3g} (default, file not read)")
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if t.kind == "choice":
            chars = 0
            for line in text.splitlines():
                if line.strip():
                    item = json.loads(line)
                    choices = [str(c) for c in item.get("choices", [])]
                    chars += len(str(item.get("context", ""))) * len(choices)
                    chars += sum(len(c) for c in choices)
        else:
            chars = len(text)
        total += chars / CHARS_PER_TOKEN
        sources.append(
            f"{t.name}: {chars / CHARS_PER_TOKEN:.3g} ({path}, {CHARS_PER_TOKEN:g} ch/tok)"
        )
    return total, "; ".join(sources) or "profile has no targets"


# ------------------------------------------------------------------------------------------
# Measured figures
# ------------------------------------------------------------------------------------------


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(f"cannot read benchmark result {path}: {exc}") from exc


def _gpu_figures(path: Path) -> GpuFigures:
    data = _read(path)
    name = str(data.get("gpu", {}).get("name", path.stem))
    detail: dict[str, str] = {}
    encoder = lloyd = None
    if emb := data.get("embedding"):
        encoder = 2.0 * emb["encoder_params"] * emb["tokens_per_s"]
        detail["encoder"] = (
            f"{emb['docs_per_s']:,.0f} docs/s, {emb['model']} {emb.get('dtype', '')}, "
            f"max {emb.get('max_tokens')} tokens"
        )
    if km := data.get("kmeans"):
        lloyd = 2.0 * km["n"] * km["k"] * km["d"] * km["iters"] / km["seconds"]
        detail["kmeans"] = (
            f"N={km['n']:,} K={km['k']:,} d={km['d']}, {km['iters']} iterations "
            f"in {km['seconds']:.2f} s"
        )
    runs = tuple(
        (int(r["parameters"]), 6.0 * r["parameters"] * r["tokens_per_s"])
        for r in (data.get("proxy") or {}).get("runs", [])
    )
    return GpuFigures(name, _shown(path), encoder, lloyd, runs, detail)


def load_figures(folder: str | Path | None = None) -> BenchFigures:
    """Reads the benchmark results in `folder` (see `results_dir`).

    Raises:
        PlanError: The folder or one of the CPU result files is missing.
    """
    root = results_dir(folder)
    missing = [name for name in CPU_FILES if not (root / name).is_file()]
    if missing:
        where = f"{root} lacks {', '.join(missing)}" if root.is_dir() else f"{root} does not exist"
        raise PlanError(
            f"no benchmark results to plan with: {where}. Run `make bench` (python -m "
            f"bench.run_all) to measure them, or set {RESULTS_ENV} to a folder that holds them"
        )
    try:
        return _figures(root)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        if isinstance(exc, PlanError):
            raise
        raise PlanError(
            f"benchmark results in {root} lack a field the planner reads ({exc!r}); re-run "
            "`make bench`"
        ) from exc


def _figures(root: Path) -> BenchFigures:
    warnings = []

    emb = _read(root / "embedding.json")
    p = emb["params"]
    src = _shown(root / "embedding.json")
    local = p.get("model_source") and Path(p["model_source"]).is_dir()
    enc = encoder_size(p["model_source"] if local else p["model"])
    pad = emb["padding"]["ours_sorted_by_tokens"]
    tokens_per_doc = pad["padded_tokens"] / p["n_documents"]
    enc_flops = 2.0 * enc.params * tokens_per_doc * emb["docs_per_s"]["ours_median"]
    encoder = Rate(
        enc_flops / p["threads"],
        src,
        f"{emb['docs_per_s']['ours_median']:.1f} docs/s of {p['model']} ({enc.params:,} "
        f"non-embedding params, {tokens_per_doc:.0f} tokens/doc incl. padding) on "
        f"{p['threads']} threads",
    )

    km = _read(root / "kmeans.json")
    src = _shown(root / "kmeans.json")
    fp = km["fit"]["params"]
    threads = fp.get("faiss_omp_threads") or km["machine"]["cpu_count"]
    pass_flops = 2.0 * fp["n"] * fp["k"] * fp["d"]
    rand_s = km["fit"]["faiss_random"]["seconds"]
    lloyd = Rate(
        pass_flops * (fp["iters"] + 1) / rand_s / threads,
        src,
        f"FAISS init=random, N={fp['n']:,} K={fp['k']:,} d={fp['d']}, {fp['iters']} iterations "
        f"+ final assignment in {rand_s:.1f} s on {threads} threads",
    )
    seed_s = max(km["fit"]["faiss_kmeans++"]["seconds"] - rand_s, 1e-9)
    seeding = Rate(
        pass_flops / seed_s,
        src,
        f"k-means++ seeding = fit(kmeans++) - fit(random) = {seed_s:.1f} s for N x K x d = "
        f"{fp['n'] * fp['k'] * fp['d']:.3g}",
    )
    greedy = None
    if "faiss_greedy_kmeans++" in km["fit"]:
        greedy_s = max(km["fit"]["faiss_greedy_kmeans++"]["seconds"] - rand_s, 1e-9)
        greedy = Rate(
            seeding_flops("greedy_kmeans++", fp["n"], fp["k"], fp["d"]) / greedy_s,
            src,
            f"greedy k-means++ seeding = fit(greedy_kmeans++) - fit(random) = {greedy_s:.1f} s",
        )
    mem = km.get("memory")
    if mem:
        mp = mem["params"]
        cores = km["machine"]["cpu_count"]
        secs = mem["chunked_mmap"]["seconds_assign"]
        assign = Rate(
            2.0 * mp["rows"] * mp["k"] * mp["d"] / secs / cores,
            src,
            f"chunked assign of {mp['rows']:,} x {mp['d']} to K={mp['k']:,} in {secs:.1f} s on "
            f"{cores} cores",
        )
    else:
        assign = Rate(lloyd.flops_per_s, src, "no assign measurement; the Lloyd rate")
    for data, name in ((emb, "embedding.json"), (km, "kmeans.json")):
        if data.get("contended"):
            warnings.append(f"{name} was recorded on a busy machine (contended: true)")

    px = _read(root / "proxy_overhead.json")
    src = _shown(root / "proxy_overhead.json")
    params = int(px["params"]["parameters"])
    best = max(
        px["by_threads"].items(),
        key=lambda kv: kv[1]["tokens_per_s"]["ours_median"] / int(kv[0]),
    )
    tps = best[1]["tokens_per_s"]["ours_median"]
    proxy = Rate(
        6.0 * params * tps / int(best[0]),
        src,
        f"{tps:,.0f} tokens/s of the {px['params']['preset']} preset ({params:,} params) on "
        f"{best[0]} thread(s)",
    )
    if px.get("contended"):
        warnings.append("proxy_overhead.json was recorded on a busy machine (contended: true)")
    gpus = tuple(_gpu_figures(path) for path in sorted(root.glob("gpu-*.json")))
    steps = _step_costs(root / SCALE_FILE) if (root / SCALE_FILE).is_file() else ()
    return BenchFigures(
        _shown(root),
        encoder,
        float(pad["efficiency"]),
        lloyd,
        seeding,
        assign,
        proxy,
        tuple(warnings),
        gpus,
        greedy,
        steps,
    )


def _step_costs(path: Path) -> tuple[StepCost, ...]:
    """Each step's CPU seconds per document at the largest size `bench/scale.py` ran, less the
    process baseline (imports, instance, shard registration), which does not grow."""
    data = _read(path)
    largest = max(data["sizes"], key=lambda size: size["documents"])
    n, base = largest["documents"], largest["baseline"]["cpu_seconds"]
    return tuple(
        StepCost(
            row["stage"],
            max(row["cpu_seconds"] - base, 0.0) / n,
            _shown(path),
            f"{row['cpu_seconds']:.0f} CPU s ({base:.0f} s baseline) for {n:,} documents",
        )
        for row in largest["stages"]
    )


# ------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _pick_gpu(figures: BenchFigures, options: PlanOptions) -> GpuFigures | None:
    for gpu in figures.gpus:
        if options.gpu_type is None or _norm(options.gpu_type) in _norm(gpu.name):
            return gpu
    return None


def _gpu_rates(
    figures: BenchFigures, options: PlanOptions, profile: Profile, proxy_params: int
) -> tuple[str, Rate, Rate, Rate, list[Assumption]]:
    """Device label and the encoder, Lloyd and proxy rates on the GPU."""
    measured = _pick_gpu(figures, options)
    gpu_type = options.gpu_type or (measured.name if measured else DEFAULT_GPU)
    peaks = peak_flops(gpu_type)
    complete = bool(
        measured
        and measured.encoder_flops_per_s
        and measured.lloyd_flops_per_s
        and measured.proxy_runs
    )
    if peaks is None and not (options.peak_tflops and options.peak_fp32_tflops) and not complete:
        raise PlanError(
            f"GPU '{gpu_type}' is not in the peak table ({', '.join(p[1] for p in GPU_PEAKS)});"
            " give --peak-tflops and --peak-fp32-tflops"
        )
    label = peaks[0] if peaks else gpu_type
    peak16 = options.peak_tflops * 1e12 if options.peak_tflops else (peaks[1] if peaks else 0.0)
    peak32 = options.peak_fp32_tflops * 1e12 if options.peak_fp32_tflops else 0.0
    peak32 = peak32 or (peaks[2] if peaks else 0.0)
    flags = [f for f, v in (("--peak-tflops", options.peak_tflops),
                            ("--peak-fp32-tflops", options.peak_fp32_tflops)) if v]  # fmt: skip
    peak_src = ", ".join(flags) or "GPU table in lib/planner.py"
    notes = [
        Assumption(
            "GPU", f"{gpu_type} (as {label}); dense peaks {_tflops(peak16)} 16-bit, "
            f"{_tflops(peak32)} FP32", peak_src,
        )
    ]  # fmt: skip
    enc_peak = peak32 if profile.encoder.dtype == "float32" else peak16
    if measured and measured.encoder_flops_per_s:
        encoder = Rate(
            measured.encoder_flops_per_s,
            measured.path,
            f"measured {measured.detail['encoder']}; its FLOP/s applied to this encoder",
        )
    else:
        encoder = Rate(
            options.encoder_util * enc_peak,
            "assumption",
            f"{options.encoder_util:g} x {_tflops(enc_peak)} peak (--encoder-util)",
        )
    if measured and measured.lloyd_flops_per_s:
        lloyd = Rate(
            measured.lloyd_flops_per_s, measured.path, f"measured {measured.detail['kmeans']}"
        )
    else:
        lloyd = Rate(
            options.kmeans_util * peak32,
            "assumption",
            f"{options.kmeans_util:g} x {_tflops(peak32)} FP32 peak (--kmeans-util)",
        )
    if measured and measured.proxy_runs:
        params, flops = min(
            measured.proxy_runs, key=lambda r: abs(math.log(r[0] / max(proxy_params, 1)))
        )
        proxy = Rate(
            flops,
            measured.path,
            f"measured {params:,}-param proxy at {flops / 6 / params:,.0f} tokens/s"
            + (f", MFU {flops / peak16:.2f}" if peak16 else "")
            + "; its FLOP/s applied to this proxy",
        )
    else:
        proxy = Rate(
            options.proxy_mfu * peak16,
            "assumption",
            f"MFU {options.proxy_mfu:g} x {_tflops(peak16)} bf16 peak (--proxy-mfu)",
        )
    device = f"GPU {label}" + (" (measured)" if measured else " (scaled)")
    return device, encoder, lloyd, proxy, notes


def default_gpus(profile: Profile) -> tuple[int, str]:
    """1 for a local deployment (one GPU step at a time), else deployment.max_concurrent."""
    kind = deployment_kind(profile)
    if kind == "local":
        return 1, "local deployment runs one GPU step at a time"
    return profile.deployment.max_concurrent, f"{kind} deployment.max_concurrent"


def plan(
    profile: Profile,
    corpus: CorpusSize,
    options: PlanOptions | None = None,
    results: str | Path | BenchFigures | None = None,
) -> Plan:
    """Estimates every stage of `profile` on `corpus` (see the module docstring).

    Raises:
        PlanError: Missing benchmark results, an unknown encoder or GPU, a bad option.
    """
    options = options or PlanOptions()
    figures = results if isinstance(results, BenchFigures) else load_figures(results)
    gpus, gpus_src = (options.gpus, "--gpus") if options.gpus else default_gpus(profile)
    if gpus < 1 or options.cpu_cores < 1:
        raise PlanError("--gpus and --cpu-cores must be >= 1")
    for flag, share in (("--encoder-util", options.encoder_util),
                        ("--kmeans-util", options.kmeans_util),
                        ("--proxy-mfu", options.proxy_mfu)):  # fmt: skip
        if not 0 < share <= 1:
            raise PlanError(f"{flag} is a share of the peak in (0, 1], got {share}")
    cores = options.cpu_cores
    a: list[Assumption] = []

    # Corpus and sizes.
    tpd_src = {
        "documents": "--tokens-per-doc (assumption)",
        "tokens": "--tokens-per-doc (assumption)",
        "tokens per document": "--tokens / --documents",
    }[corpus.derived]
    a.append(Assumption("tokens per document", f"{corpus.tokens_per_doc:,.0f}", tpd_src))
    a.append(
        Assumption(
            "tokens", "the encoder's and the proxies' tokenizers count the same", "assumption"
        )
    )
    static = profile.encoder.kind == "static"
    costs = {c.step: c for c in figures.steps}
    if static:
        enc = EncoderSize(0, 0, static_dim(profile.encoder.model), "static model config.json")
        a.append(
            Assumption(
                f"encoder {profile.encoder.model} (static)",
                f"a mean of token vectors on the CPU, dim {enc.dim}: costed per document from "
                "the scale benchmark, not in FLOPs",
                enc.source,
            )
        )
        if "embeddings" not in costs:
            raise PlanError(
                f"encoder.kind static is costed from {SCALE_FILE}, which {figures.folder} lacks; "
                "run `python -m bench.scale` to measure it"
            )
    else:
        enc = encoder_size(profile.encoder.model, options.encoder_params)
        a.append(
            Assumption(
                f"encoder {profile.encoder.model}",
                f"{enc.params:,} parameters that multiply (of {enc.total_params:,}), dim {enc.dim}",
                enc.source,
            )
        )
    cfg = proxy_config(profile)
    if options.vocab_size:
        vocab, vocab_src = options.vocab_size, "--vocab-size"
    elif profile.tokenizer.kind == "bpe":
        vocab, vocab_src = profile.tokenizer.vocab_size, "profile tokenizer.vocab_size"
    else:
        vocab = profile.tokenizer.vocab_size
        vocab_src = "profile tokenizer.vocab_size (pretrained tokenizer: check it, --vocab-size)"
    params = proxy_parameters(cfg, vocab)
    attention = 12 * cfg.n_layer * cfg.seq_len * cfg.n_embd / (6 * params)
    a.append(
        Assumption(
            f"proxy {profile.proxy.preset} ({cfg.arch} {cfg.n_layer} x {cfg.n_embd}, seq "
            f"{cfg.seq_len}, vocab {vocab:,})",
            f"{params:,} parameters (token embeddings counted once, tied with the output layer)",
            vocab_src,
        )
    )
    a.append(
        Assumption(
            "FLOPs",
            "encoder 2 x non-embedding params per token; k-means 2 x N x K x d per pass; proxy 6 x "
            f"params per trained and 2 x per scored token (attention scores, +{attention:.0%} for "
            "this proxy, left out as in the MFU convention)",
            "arithmetic",
        )
    )

    # Rates.
    if options.device == "gpu":
        device, enc_rate, lloyd_rate, proxy_rate, notes = _gpu_rates(
            figures, options, profile, params
        )
        a += notes
        gpu_stage: Literal["GPU", "CPU"] = "GPU"
    else:
        device = f"CPU ({cores} cores at the benchmark machine's per-core rates)"

        def scaled(r: Rate) -> Rate:
            return Rate(r.flops_per_s * cores, r.source, f"{r.detail}; x {cores} cores")

        enc_rate = scaled(figures.encoder_per_core)
        lloyd_rate = scaled(figures.lloyd_per_core)
        proxy_rate = scaled(figures.proxy_per_core)
        gpu_stage = "CPU"
    measured = [
        ("encoder", figures.encoder_per_core),
        ("k-means Lloyd", figures.lloyd_per_core),
        ("k-means assign", figures.assign_per_core),
        ("proxy training", figures.proxy_per_core),
    ]
    for what, r in measured:
        a.append(
            Assumption(f"CPU {what}", f"{_tflops(r.flops_per_s)} per core: {r.detail}", r.source)
        )
    a.append(
        Assumption("k-means++ seeding (host CPU)", figures.seeding.detail, figures.seeding.source)
    )
    if figures.greedy_seeding is not None:
        g = figures.greedy_seeding
        a.append(Assumption("greedy k-means++ seeding (host CPU)", g.detail, g.source))
    if options.device == "gpu":
        for what, r in (
            ("encoder", enc_rate),
            ("k-means Lloyd", lloyd_rate),
            ("proxy", proxy_rate),
        ):
            a.append(Assumption(f"GPU {what}", f"{_tflops(r.flops_per_s)}: {r.detail}", r.source))
    a += [Assumption("caution", w, figures.folder) for w in figures.warnings]

    def run_on(flops: float, rate: Rate) -> tuple[float, float]:
        """(device-hours, hours on one device): GPU-h, or core-h with device cpu."""
        seconds = flops / rate.flops_per_s
        return seconds * (cores if options.device == "cpu" else 1) / 3600, seconds / 3600

    def src(rate: Rate) -> str:
        return Path(rate.source).name if rate.source != "assumption" else "assumption"

    stages: list[Stage] = []
    n_docs = corpus.documents

    def per_document(name: str, steps: tuple[str, ...]) -> Stage | None:
        """A CPU row costed from the scale benchmark's CPU seconds per document."""
        measured = [costs[step] for step in steps if step in costs]
        if not measured:
            return None
        core_h = sum(c.cpu_seconds_per_doc for c in measured) * n_docs / 3600
        detail = "; ".join(
            f"{c.step}: {c.cpu_seconds_per_doc * 1e3:.3g} CPU ms/doc" for c in measured
        )
        return Stage(name, "CPU", 0.0, core_h, core_h / cores, Path(measured[0].source).name,
                     f"{detail} ({measured[0].detail.split(' for ')[-1]} measured)")  # fmt: skip

    # Embedding: truncated at max_tokens, padded as measured.
    t_enc = min(corpus.tokens_per_doc + SPECIAL_TOKENS, profile.encoder.max_tokens)
    t_model = t_enc / figures.padding_efficiency
    flops = 2.0 * enc.params * t_model * n_docs
    dev_h, one_h = run_on(flops, enc_rate)
    wall = one_h / (gpus if gpu_stage == "GPU" else 1)
    static_row = per_document("embedding", ("embeddings",)) if static else None
    if static_row is not None:
        stages.append(static_row)
    else:
        stages.append(
            Stage("embedding", gpu_stage, flops, dev_h, wall, src(enc_rate),
                  f"{t_model:.0f} tokens/doc through the encoder (max_tokens "
                  f"{profile.encoder.max_tokens}, padding efficiency "
                  f"{figures.padding_efficiency:.3f})")
        )  # fmt: skip
    if not static:
        a.append(
            Assumption(
                "encoder tokens per document",
                f"min(tokens/doc + {SPECIAL_TOKENS}, max_tokens) = {t_enc:.0f} (an upper bound: "
                f"the mean of truncated lengths is lower), / padding efficiency "
                f"{figures.padding_efficiency:.3f}",
                str(Path(figures.folder) / "embedding.json"),
            )
        )

    # k-means fit: Lloyd on the sample (+ the final assignment of the sample), seeding on the host.
    km = profile.kmeans
    sample = min(n_docs, km.k * km.max_points_per_centroid)
    pass_flops = 2.0 * sample * km.k * enc.dim
    lloyd_flops = pass_flops * (km.niter + 1)
    seed_rate = figures.seeding
    if km.init == "greedy_kmeans++" and figures.greedy_seeding is not None:
        seed_rate = figures.greedy_seeding
    seed_flops = seeding_flops(km.init, sample, km.k, enc.dim)
    seed_s = seed_flops / seed_rate.flops_per_s
    lloyd_s = lloyd_flops / lloyd_rate.flops_per_s
    fit_h = (lloyd_s + seed_s) / 3600
    fit_dev = fit_h * (cores if gpu_stage == "CPU" else 1)
    stages.append(
        Stage("k-means fit", gpu_stage, lloyd_flops + seed_flops, fit_dev,
              fit_h, src(lloyd_rate),
              f"{km.niter} iterations on {sample:,.0f} sampled x K={km.k:,} x d={enc.dim}, "
              + ("one GPU; " if gpu_stage == "GPU" else "")
              + f"{km.init} seeding {format_hours(seed_s / 3600)} of it on the host CPU")
    )  # fmt: skip
    a.append(
        Assumption(
            "k-means sample",
            f"min(documents, k x max_points_per_centroid) = {sample:,.0f}; init {km.init}; the "
            "seeding runs in numpy on the host at the benchmark machine's rate while the GPU waits",
            "profile kmeans.*",
        )
    )

    # k-means assign: every document once, on the CPU (lib.kmeans.assign: a CPU IndexFlatL2).
    flops = 2.0 * n_docs * km.k * enc.dim
    core_s = flops / figures.assign_per_core.flops_per_s
    on_gpu = flops / lloyd_rate.flops_per_s / 3600 if options.device == "gpu" else None
    stages.append(
        Stage("k-means assign", "CPU", flops, core_s / 3600, core_s / 3600 / cores,
              src(figures.assign_per_core),
              "CPU FAISS index in lib/kmeans.assign"
              + (f"; a GPU at the Lloyd rate would take {on_gpu:.3g} GPU-h" if on_gpu else ""))
    )  # fmt: skip

    # The other CPU steps that grow with the corpus, where the scale benchmark timed them.
    for name, steps in SCALED_STAGES:
        row = per_document(name, steps)
        if row is not None:
            stages.append(row)
    if costs:
        a.append(
            Assumption(
                "CPU steps per document",
                "CPU seconds per document at the largest size the scale benchmark ran, less its "
                "process baseline; linear in documents (measured within the benchmark's cost "
                f"ratio across sizes) and in cores (--cpu-cores = {cores})",
                str(Path(figures.folder) / SCALE_FILE),
            )
        )

    # Proxies.
    n_proxies = sum(profile.search.rounds)
    train_tokens = cfg.steps * cfg.tokens_per_step
    if options.eval_tokens is not None:
        ev_tokens, ev_src = options.eval_tokens, "--eval-tokens"
    else:
        ev_tokens, ev_src = eval_tokens_per_proxy(profile)
    train_flops = 6.0 * params * train_tokens
    eval_flops = 2.0 * params * ev_tokens
    tr_dev, tr_one = run_on(train_flops, proxy_rate)
    ev_dev, ev_one = run_on(eval_flops, proxy_rate)
    stages.append(
        Stage("proxy train (each)", gpu_stage, train_flops, tr_dev, tr_one, src(proxy_rate),
              f"{train_tokens:.4g} tokens ({cfg.steps:,} steps x {cfg.tokens_per_step:,})",
              in_total=False)
    )  # fmt: skip
    stages.append(
        Stage("proxy eval (each)", gpu_stage, eval_flops, ev_dev, ev_one, src(proxy_rate),
              f"{ev_tokens:.3g} target tokens scored, forward only", in_total=False)
    )  # fmt: skip
    per_proxy = tr_one + ev_one
    if gpu_stage == "GPU":
        wall = sum(math.ceil(n / gpus) for n in profile.search.rounds) * per_proxy
    else:
        wall = n_proxies * per_proxy
    rounds = " + ".join(str(n) for n in profile.search.rounds)
    stages.append(
        Stage(f"search ({n_proxies} proxies)", gpu_stage, n_proxies * (train_flops + eval_flops),
              n_proxies * (tr_dev + ev_dev), wall, src(proxy_rate),
              f"rounds {rounds}" + (f", {gpus} at a time" if gpu_stage == "GPU" else ""))
    )  # fmt: skip
    a.append(
        Assumption(
            "proxies",
            f"{n_proxies} = {rounds} (search.rounds), each {train_tokens:.4g} training tokens "
            f"(train_tokens rounded up to whole steps) and {ev_tokens:.3g} evaluation tokens "
            f"scored at the training rate",
            f"profile; evaluation: {ev_src}",
        )
    )
    a.append(
        Assumption(
            "wall-clock",
            f"{gpus} GPU(s) ({gpus_src}): embedding split evenly across them, k-means fit on one, "
            f"each round's proxies {gpus} at a time; CPU stages on {cores} cores (--cpu-cores), "
            "rates linear in cores; stages one after another; no start-up, I/O or queueing",
            "assumption",
        )
    )
    if not costs:
        return Plan(profile.name, device, gpus, cores, corpus, tuple(stages), tuple(a))
    return Plan(profile.name, device, gpus, cores, corpus, tuple(stages), tuple(a),
                not_estimated=MEASURED_NOT_ESTIMATED)  # fmt: skip


# ------------------------------------------------------------------------------------------
# What a run writes
# ------------------------------------------------------------------------------------------


def output_bytes(profile: Profile, documents: float, corpus_bytes: float) -> dict[str, float]:
    """Bytes a whole run writes under storage.root, by part: an estimate for the free-space
    check, meant to err high.

    Documents: zstd Parquet of the texts, taken as large as the corpus files (compressed
    shards come out about their size, plain JSON lines smaller). Embeddings: float32 vectors.
    Proxies: each checkpoint holds weights and Adam's two moments (12 bytes a parameter). The
    manifest and its exports: the selected texts twice (manifest Parquet, HF) at 4 bytes a
    token, and the token ids (4 bytes) in the Megatron export.
    """
    if profile.encoder.kind == "static":
        dim = static_dim(profile.encoder.model)
    else:
        try:
            dim = encoder_size(profile.encoder.model).dim
        except PlanError:
            dim = 1024
    proxies = sum(profile.search.rounds) + 1 if profile.search.trains_proxies else 0
    params = proxy_parameters(proxy_config(profile), profile.tokenizer.vocab_size)
    tokens = float(profile.manifest.total_tokens)
    return {
        "documents": float(corpus_bytes),
        "embeddings": documents * dim * 4.0,
        "per-document tables": documents * 64.0,
        "proxy checkpoints": proxies * params * 12.0,
        "manifest and exports": tokens * 12.0,
    }
