"""The climb profile: every setting a user changes, loaded from one YAML file and validated.

`CLIMB_CONFIG=path/to/profile.yaml` selects a file; otherwise `CLIMB_PROFILE=name` selects one of
the profiles shipped in `climb_assets/profiles/` (default: `demo`). A profile may start with
`extends: <name or path>` and then only lists the keys it changes.

Validation is strict: an unknown key or a value of the wrong type raises `ProfileError` naming the
key, what was given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PROFILES_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "demo"
MIN_PREDICTOR_POINTS = 4
"""Fewest (mixture, objective) pairs a predictor fits on (lib.predictors.tree.MIN_POINTS)."""


class ProfileError(ValueError):
    """A profile that cannot be used as written."""


@dataclass(frozen=True)
class StorageSettings:
    """Where every output lives: a local folder or an `s3://bucket/prefix`."""

    root: str = ".climb/demo"
    """Relative local paths resolve against `CLIMB_HOME` (default: the current directory)."""
    cache: str = ".climb/cache"
    """Local scratch for remote roots: spooled uploads, proxy checkpoints being written, and
    files needed on disk (token arrays, tokenizer, checkpoints to evaluate). Unused when local."""
    endpoint_url: str | None = None
    """An S3-compatible endpoint (MinIO, a local test server). None: `AWS_ENDPOINT_URL` if set,
    else AWS. Credentials never go in the profile: they come from the environment."""
    region: str | None = None
    """None: `AWS_REGION` / `AWS_DEFAULT_REGION` if set, else boto3's default."""


@dataclass(frozen=True)
class CorpusSettings:
    """The input shards and their columns."""

    path: str = ".climb/demo/corpus"
    formats: tuple[str, ...] = ("parquet", "jsonl")
    text_column: str = "text"
    id_column: str | None = "doc_id"
    """None: the id is a hash of the text."""
    extra_columns: tuple[str, ...] = ()
    """Carried through for evaluation and the catalog only; the algorithm never reads them."""
    min_chars: int = 1
    on_duplicate_id: Literal["error", "keep_first"] = "error"
    max_chars: int | None = 100_000
    """Longest document kept whole; null keeps every document whole."""
    long_documents: Literal["split", "truncate"] = "split"
    """What happens to a longer document: split at paragraph breaks, or cut at max_chars."""
    on_bad_shard: Literal["error", "skip"] = "error"
    """A shard file that cannot be read: stop with its path, or quarantine it and go on."""


@dataclass(frozen=True)
class EncoderSettings:
    """The pretrained text encoder used for document embeddings."""

    kind: Literal["transformers", "static"] = "transformers"
    """transformers: `model` is a hub id or folder run through transformers; static: `model` is a
    local folder in model2vec's format (`climb distill-static --out FOLDER` builds one from
    MiniLM), a mean of token vectors on the CPU; only `max_tokens` of the settings below apply."""
    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    revision: str | None = None
    max_tokens: int = 128
    batch_size: int = 64
    read_batch_rows: int = 8192
    """Documents the embeddings step reads, tokenizes and encodes at a time (its memory); a
    larger shard takes longer, never more memory. Batches are length-sorted within this."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """auto: float16 on cuda, float32 on cpu."""
    threads: int | None = None
    """CPU threads for torch; None keeps torch's default."""
    trust_remote_code: bool = False
    """Needed by encoders that ship their own modelling code (stella_en_400M_v5)."""


@dataclass(frozen=True)
class KMeansSettings:
    """FAISS k-means on the embeddings."""

    k: int = 64
    niter: int = 25
    seed: int = 42
    spherical: bool = True
    init: Literal["greedy_kmeans++", "kmeans++", "random"] = "greedy_kmeans++"
    """greedy_kmeans++: greedy k-means++ start (2 + ln k candidates per step, as scikit-learn)
    on a seeded subsample of 32 rows per centroid; kmeans++: plain k-means++ on the whole sample;
    random: FAISS's own random start (fastest, highest inertia). Compared in bench/kmeans.py."""
    max_points_per_centroid: int = 256
    """The fit uses at most k * this many documents, sampled with `seed` across all shards."""
    assign_chunk_size: int = 65536
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass(frozen=True)
class ScorerSettings:
    """One document-quality scorer and the cluster-mean threshold it enforces (1..5 scale)."""

    name: str
    kind: Literal["heuristic", "fasttext", "hf_classifier"] = "heuristic"
    path: str | None = None
    threshold: float = 3.0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QualitySettings:
    """Cluster pruning: a cluster is kept when its mean score reaches every scorer's threshold."""

    scorers: tuple[ScorerSettings, ...] = (ScorerSettings(name="heuristic"),)
    min_cluster_size: int = 1
    top_terms: int = 10
    sample_documents: int = 3
    """Representative documents per cluster: the ones nearest its centroid."""
    term_documents: int = 2000
    """Documents per cluster whose words give its top terms: a seeded uniform sample of a
    larger cluster (every document of a smaller one)."""
    seed: int = 42
    """Seeds the top-term sample."""
    workers: int | None = None
    """Processes the heuristic scorer uses per shard (unset: the usable CPUs; 1: in-process).
    Scores do not depend on it."""
    read_batch_rows: int = 16384
    """Documents read and scored at a time: memory holds one batch of texts, not the shard."""


@dataclass(frozen=True)
class MergeSettings:
    """Ward merge of kept clusters into super-clusters, by a distance threshold or target count."""

    method: Literal["ward", "average", "complete", "single"] = "ward"
    distance_threshold: float | None = 1.5
    target_count: int | None = None


@dataclass(frozen=True)
class TokenizerSettings:
    """The proxies' tokenizer: a byte-level BPE trained on kept documents, or a pretrained one."""

    kind: Literal["bpe", "pretrained"] = "bpe"
    path: str | None = None
    """For `pretrained`: a tokenizer.json, a model folder or a hub id."""
    vocab_size: int = 4096
    sample_documents: int = 20000
    seed: int = 42


@dataclass(frozen=True)
class ProxySettings:
    """The proxy language models trained for every candidate mixture.

    `preset` names a size from `climb_assets.lib.proxy.PROXY_PRESETS` (tiny, 62M, 132M, 350M);
    any key set here overrides it, and unset keys (null) keep the preset's value.
    """

    preset: str = "tiny"
    arch: Literal["gpt2", "llama"] | None = None
    n_layer: int | None = None
    n_embd: int | None = None
    n_head: int | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    train_tokens: int | None = None
    lr: float | None = None
    warmup_fraction: float | None = None
    weight_decay: float | None = None
    seed: int | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = None
    eval_fractions: tuple[float, ...] = (0.25, 0.5, 1.0)
    """Shares of the token budget after which each proxy is scored on the targets: its
    learning curve, which the bimix predictor fits and the catalog shows. Increasing, in
    (0, 1], ending at 1.0 (the score the search ranks by)."""


@dataclass(frozen=True)
class TargetSettings:
    """One evaluation target: held-out text (bits per byte) or multiple choice (accuracy)."""

    name: str
    path: str
    kind: Literal["text", "choice"] = "text"
    weight: float = 1.0
    max_documents: int | None = None
    text_column: str = "text"
    on_overlap: Literal["warn", "error"] = "error"


SEARCH_FINALS = ("confirmed", "argmax", "topk_mean", "best_observed")
"""Final rules that need the search's proxies; the other `search.final` values are the
training-free reference mixtures of `climb_assets.lib.baselines`."""


@dataclass(frozen=True)
class SearchSettings:
    """The bootstrapping loop: proxies per round, candidates, exploration and the final pick."""

    rounds: tuple[int, ...] = (8, 4, 4)
    seed: int = 42
    candidates: int = 100_000
    top_k_min: int = 128
    design: Literal["cover", "maximin", "random"] = "cover"
    """How round 1 picks its mixtures from the sampler's draws, and later rounds from the
    ranked top set. cover: the draws nearest the centres of k-means clusters of the draws
    (round 1: picks spread over where the sampler puts its mass, interior included; later
    rounds: farthest-point picks, as maximin). maximin: greedy farthest-point everywhere,
    which in round 1 takes the simplex's corners (one-hot mixtures). random: uniform picks,
    as in the paper."""
    acquisition: Literal["mean", "ucb", "ei"] = "mean"
    """How later rounds rank candidates: the predicted objective (the paper), an upper
    confidence bound mean + kappa * std, or expected improvement over the best proxy. ucb and
    ei need a predictor with an uncertainty (gp, aligned, or auto with rule ensemble)."""
    kappa: float = 1.0
    """Weight of the predictive standard deviation in the ucb acquisition."""
    exploit_picks: int = 1
    """How many of each later round's proxies train the best-scored candidates themselves
    (the predictor's own choice), before the design spreads the rest over the top set. 0 is
    the paper's (all picks by the design); with 1, every round measures the mixture the
    predictor would ship, so later rounds improve on round 1 whenever the predictor is right
    (bench/README.md, search quality)."""
    target_prior_weight: float = 0.0
    """How far round 1's sampler centre (and every candidate pool's) leans from the token
    prior toward the target documents' distribution over super-clusters, in [0, 1)."""
    anchors: tuple[Literal["target_aligned", "natural"], ...] = ("target_aligned", "natural")
    """Training-free mixtures round 1 trains among its proxies before its design picks the
    rest (design `reference` in the catalog's mixtures): target_aligned (the target documents'
    distribution over super-clusters; skipped with a note without text targets) and natural.
    Each is fitted under the repetition caps. Empty: round 1 is the design alone."""
    noise_replicates: int = 1
    """How many of round 1's mixtures are trained a second time with another proxy seed; the
    pairs give the proxy noise floor (round metadata, the catalog's rounds). 0: none, and no
    round can say that its proxies cannot tell its mixtures apart."""
    fallback_radius: float = 0.25
    """When no predictor is trusted, a round proposes by a model-free trust region around the
    best measured mixtures; a local move shifts at most this share of the weight."""
    method: Literal["climb", "doremi"] = "climb"
    """climb: the bootstrapping rounds above (the paper). doremi: DoReMi (Xie et al. 2023), two
    proxies and no target: one on the natural weights, then a group-DRO proxy whose weights
    follow its excess loss over the first (`doremi_mixture`); its averaged weights ship."""
    doremi_step_size: float = 1.0
    """DoReMi's step size on the log-weights (the paper's 1.0)."""
    doremi_smoothing: float = 1e-3
    """DoReMi's mix of uniform weights into every update (the paper's 1e-3)."""
    final: Literal[
        "confirmed", "argmax", "topk_mean", "best_observed", "doremi", "natural", "uniform",
        "unimax",
        "entropy_shannon", "entropy_conditional", "entropy_shannon_softmax",
        "entropy_conditional_softmax", "target_aligned",
    ] = "confirmed"  # fmt: skip
    """The final mixture. confirmed: the last predictor's argmax is trained once more as a
    confirmation proxy (`confirmation_proxy`), and the manifest ships the best measured of that
    pick, the best proxy of the rounds and the anchors, saying which. argmax: the predictor's
    argmax over fresh candidates, unmeasured (the paper; the
    mean of the tied set when a tree predictor ties), topk_mean (RegMix: mean of the top
    final_top_k), or best_observed (the trained proxy with the best objective; stronger when
    few proxies leave the predictor's best region wide, see bench/README.md). Or one of the
    training-free reference mixtures (`reference_mixtures`: natural, uniform, unimax, the four
    entropy mixtures, target_aligned): then no search round runs and no proxy is trained.
    With method doremi, DoReMi's mixture ships (argmax or doremi) unless a training-free
    reference is named."""
    final_top_k: int = 128
    token_pool: int | None = None
    """Tokens per super-cluster that `cluster_tokens` tokenizes for the proxies, as the
    encoder's per-document counts measure them: a larger super-cluster is a seeded uniform
    document sample of about this size (its token count, the natural prior and the caps still
    count every document). None: four proxy budgets, at least 10 million. Must hold at least
    one proxy's budget."""
    token_pool_seed: int = 42
    """Seeds which documents a sampled super-cluster's pool takes."""
    temperature: float = 0.5
    max_ratio: float = 15.0
    min_weight: float = 2e-4

    @property
    def runs_rounds(self) -> bool:
        """Whether CLIMB's rounds run: method climb and a final rule that reads them."""
        return self.method == "climb" and self.final in SEARCH_FINALS

    @property
    def runs_doremi(self) -> bool:
        """Whether DoReMi's two proxies train: method doremi and its mixture is the final."""
        return self.method == "doremi" and self.final in ("confirmed", "argmax", "doremi")

    @property
    def trains_proxies(self) -> bool:
        """False when the final mixture is a training-free reference."""
        return self.runs_rounds or self.runs_doremi


@dataclass(frozen=True)
class PredictorSettings:
    """The predictor f(mixture) -> objective fitted after every round.

    `kind`: lightgbm (the paper's; its hyper-parameters below), log_linear (Data Mixing Law),
    bimix (BiMix, fitted on the proxies' learning curves), gp (Gaussian process), aligned
    (the target's distribution over super-clusters), or auto: every kind is scored by k-fold
    cross-validated Spearman each round, and the best (`auto_rule: best`) or a CV-weighted
    ensemble (`auto_rule: ensemble`) is used.
    """

    kind: Literal["auto", "lightgbm", "log_linear", "bimix", "gp", "aligned"] = "auto"
    auto_rule: Literal["best", "ensemble"] = "best"
    learning_rate: float = 0.01
    num_boost_round: int = 1000
    max_depth: int = 4
    min_child_samples: int = 5
    reg_alpha: float = 1.0
    reg_lambda: float = 1.0
    early_stopping_rounds: int = 20
    """Patience on a 10% validation split (used from 20 points up); 0 boosts every round."""
    cv_folds: int = 5
    trust_floor: float | None = 0.3
    """A kind steers the search only when its cross-validated Spearman is at least this and its
    out-of-fold predictions stay within the measured range (widened by trust_range_margin of
    it on each side). When no kind qualifies the next round proposes by the model-free trust
    region, saying so. null: every kind is trusted (the behaviour before this rule)."""
    trust_range_margin: float = 0.5


@dataclass(frozen=True)
class ManifestSettings:
    """The final ClimbMix manifest: token budget, repetition cap, document selection, exports."""

    total_tokens: int = 1_000_000
    max_epochs: float = 4.0
    seed: int = 42
    parquet_shards: int = 4
    exports: tuple[str, ...] = ("tokenizer", "megatron", "hf", "climblab")
    """Written by `climbmix_exports`: tokenizer (the training tokenizer as a folder
    `AutoTokenizer` loads; added whenever megatron or hf is), megatron (.bin/.idx, train and
    validation blends), hf (pre-mixed train and validation Parquet splits + dataset card),
    climblab (the kept corpus by super-cluster). Empty: none."""
    tokenizer: str | None = None
    """The training tokenizer of the megatron export: a tokenizer.json, a model folder or a hub
    id. Unset: the proxy tokenizer (fine for a try; a production run names its own)."""
    export_workers: int | None = None
    """Processes the megatron export writes super-clusters with (each owns whole ones). Unset:
    the usable CPUs (in-process below 2M granted tokens); 1: in-process. Output is the same."""
    validation_share: float = 0.01
    """Documents of each super-cluster held out for validation (seeded, at least one where it
    has two, never all): `manifest/validation/`, the exports' validation prefixes and split.
    They are never selected for training. 0: no validation split."""
    license: str = "unknown: set manifest.license"
    """The corpus's licence, stated in the manifest and the HF dataset card."""
    seq_length: int = 2048
    """The training run's sequence length: the megatron export states `--train-samples` (the
    manifest's tokens in sequences of this length) and its command line with it."""
    global_batch_size: int = 256
    """Sequences per optimizer step of the training run: the export's `--global-batch-size`
    (and `train_iters` in its `_export.json`)."""


@dataclass(frozen=True)
class GpuPlacement:
    """How a GPU-tagged step is placed on a cluster executor."""

    count: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    node_selector: dict[str, Any] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = (
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    )
    ecs_cpu: int = 4096
    ecs_memory: int = 16384


@dataclass(frozen=True)
class DeploymentSettings:
    """Which executor runs the steps; `CLIMB_DEPLOYMENT` overrides `kind`."""

    kind: Literal["local", "k8s", "ecs"] = "local"
    max_concurrent: int = 2
    gpu: GpuPlacement = field(default_factory=GpuPlacement)
    confirm_above_hours: float | None = 24.0
    """`climb run` asks for `--yes` when `climb plan` estimates more wall-clock than this for
    the corpus as preflight counts it (None: never asks)."""


@dataclass(frozen=True)
class Profile:
    """Every setting of one climb deployment."""

    name: str = DEFAULT_PROFILE
    storage: StorageSettings = field(default_factory=StorageSettings)
    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    kmeans: KMeansSettings = field(default_factory=KMeansSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)
    merge: MergeSettings = field(default_factory=MergeSettings)
    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    targets: tuple[TargetSettings, ...] = ()
    search: SearchSettings = field(default_factory=SearchSettings)
    predictor: PredictorSettings = field(default_factory=PredictorSettings)
    manifest: ManifestSettings = field(default_factory=ManifestSettings)
    deployment: DeploymentSettings = field(default_factory=DeploymentSettings)

    def __post_init__(self) -> None:
        _check_ranges(self)

    def to_dict(self) -> dict[str, Any]:
        """The profile as plain data (lists, dicts), as it would be written to YAML."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def digest(self) -> str:
        """A short hash of the whole profile, recorded in every output."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _check_ranges(p: Profile) -> None:
    def need(ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ProfileError(f"profile '{p.name}': {key} {msg}")

    need(p.encoder.max_tokens > 0, "encoder.max_tokens", "must be > 0")
    need(p.encoder.batch_size > 0, "encoder.batch_size", "must be > 0")
    need(p.encoder.read_batch_rows > 0, "encoder.read_batch_rows", "must be > 0")
    need(p.quality.read_batch_rows > 0, "quality.read_batch_rows", "must be > 0")
    need(
        p.quality.workers is None or p.quality.workers >= 1,
        "quality.workers",
        "must be >= 1 (or unset for the usable CPUs)",
    )
    need(
        p.encoder.kind == "transformers" or p.encoder.revision is None,
        "encoder.revision",
        "does not apply to encoder.kind static (a local folder); remove it",
    )
    need(
        p.encoder.kind == "transformers" or "://" not in p.encoder.model,
        "encoder.model",
        "must be a local folder for encoder.kind static (model2vec's format)",
    )
    need(p.kmeans.k >= 1, "kmeans.k", "must be >= 1")
    need(p.kmeans.niter >= 1, "kmeans.niter", "must be >= 1")
    need(p.kmeans.max_points_per_centroid >= 1, "kmeans.max_points_per_centroid", "must be >= 1")
    need(p.kmeans.assign_chunk_size >= 1, "kmeans.assign_chunk_size", "must be >= 1")
    need(bool(p.corpus.formats), "corpus.formats", "must list at least one of parquet, jsonl")
    for fmt in p.corpus.formats:
        need(fmt in ("parquet", "jsonl"), "corpus.formats", f"has '{fmt}'; allowed: parquet, jsonl")
    need(
        p.corpus.max_chars is None or p.corpus.max_chars >= 1000,
        "corpus.max_chars",
        "must be >= 1000 or null (no cap)",
    )
    need(bool(p.quality.scorers), "quality.scorers", "must list at least one scorer")
    names = [s.name for s in p.quality.scorers]
    need(len(set(names)) == len(names), "quality.scorers", f"has duplicate names {names}")
    for s in p.quality.scorers:
        need(1.0 <= s.threshold <= 5.0, f"quality.scorers[{s.name}].threshold", "must be in 1..5")
        need(
            s.kind == "heuristic" or bool(s.path),
            f"quality.scorers[{s.name}].path",
            f"is required for kind '{s.kind}'",
        )
    m = p.merge
    need(
        (m.distance_threshold is None) != (m.target_count is None),
        "merge",
        "needs exactly one of distance_threshold or target_count (set the other to null)",
    )
    need(m.target_count is None or m.target_count >= 1, "merge.target_count", "must be >= 1")
    need(
        m.distance_threshold is None or m.distance_threshold > 0,
        "merge.distance_threshold",
        "must be > 0",
    )
    r = p.search.rounds
    need(bool(r), "search.rounds", "must list the proxies per round, e.g. [64, 32, 16]")
    need(len(r) <= 365, "search.rounds", "allows at most 365 rounds")
    for i, n in enumerate(r):
        need(n >= 1, f"search.rounds[{i}]", f"is {n}; every round needs at least one proxy")
    need(
        r[0] >= MIN_PREDICTOR_POINTS,
        "search.rounds[0]",
        f"is {r[0]} but the predictor needs at least {MIN_PREDICTOR_POINTS} trained proxies; "
        "raise the round-1 budget",
    )
    need(p.search.candidates >= 1, "search.candidates", "must be >= 1")
    need(
        p.search.token_pool is None or p.search.token_pool >= 1,
        "search.token_pool",
        "must be >= 1 (tokens per super-cluster), or null for four proxy budgets",
    )
    need(p.quality.term_documents >= 1, "quality.term_documents", "must be >= 1")
    need(
        0 <= p.search.target_prior_weight < 1,
        "search.target_prior_weight",
        "must be in [0, 1) (0: the token prior; toward 1: the target's distribution)",
    )
    need(p.search.kappa >= 0, "search.kappa", "must be >= 0")
    need(len(set(p.search.anchors)) == len(p.search.anchors), "search.anchors", "has duplicates")
    need(
        0 <= p.search.noise_replicates <= r[0],
        "search.noise_replicates",
        f"is {p.search.noise_replicates}; use 0..{r[0]} (round 1's proxies)",
    )
    need(
        0 < p.search.fallback_radius <= 1,
        "search.fallback_radius",
        "must be in (0, 1] (the share of the weight a local move shifts)",
    )
    need(
        p.predictor.trust_floor is None or -1 <= p.predictor.trust_floor <= 1,
        "predictor.trust_floor",
        "must be a Spearman correlation in [-1, 1], or null to trust every kind",
    )
    need(p.predictor.trust_range_margin >= 0, "predictor.trust_range_margin", "must be >= 0")
    need(p.search.exploit_picks >= 0, "search.exploit_picks", "must be >= 0")
    need(p.search.doremi_step_size > 0, "search.doremi_step_size", "must be > 0 (the paper: 1.0)")
    need(
        0 <= p.search.doremi_smoothing < 1,
        "search.doremi_smoothing",
        "must be in [0, 1) (the paper: 1e-3)",
    )
    need(
        p.search.final != "doremi" or p.search.method == "doremi",
        "search.final",
        "is doremi, which needs DoReMi's two proxies; set search.method: doremi",
    )
    need(
        p.search.method != "doremi" or p.search.final not in ("topk_mean", "best_observed"),
        "search.final",
        f"is {p.search.final}, which picks among CLIMB's trained proxies, but search.method "
        "doremi trains none of those; leave search.final unset (DoReMi's mixture ships) or name "
        "a training-free reference mixture",
    )
    fr = p.proxy.eval_fractions
    need(bool(fr), "proxy.eval_fractions", "must list at least [1.0]")
    need(
        all(0 < f <= 1 for f in fr),
        "proxy.eval_fractions",
        f"is {list(fr)}; every fraction must be in (0, 1]",
    )
    need(
        all(a < b for a, b in itertools.pairwise(fr)),
        "proxy.eval_fractions",
        f"is {list(fr)}; list the fractions in increasing order, without repeats",
    )
    need(
        bool(fr) and fr[-1] == 1.0,
        "proxy.eval_fractions",
        f"is {list(fr)}; it must end with 1.0 (the score the search ranks by)",
    )
    need(
        p.predictor.kind != "bimix" or len(fr) >= 2,
        "predictor.kind",
        "is bimix, which fits learning curves: set proxy.eval_fractions to at least two "
        "fractions, e.g. [0.25, 0.5, 1.0]",
    )
    need(
        p.predictor.kind not in ("bimix",) or all(t.kind == "text" for t in p.targets),
        "predictor.kind",
        "is bimix, which models a loss in share and volume; choice targets (accuracy) need "
        "log_linear, gp, lightgbm or auto",
    )
    need(p.tokenizer.vocab_size >= 256, "tokenizer.vocab_size", "must be >= 256")
    need(
        p.tokenizer.kind == "bpe" or bool(p.tokenizer.path),
        "tokenizer.path",
        "is required for kind 'pretrained'",
    )
    need(
        p.proxy.train_tokens is None or p.proxy.train_tokens > 0,
        "proxy.train_tokens",
        "must be > 0",
    )
    need(p.manifest.total_tokens > 0, "manifest.total_tokens", "must be > 0 (tokens to train on)")
    need(p.manifest.max_epochs > 0, "manifest.max_epochs", "must be > 0")
    need(
        p.manifest.export_workers is None or p.manifest.export_workers >= 1,
        "manifest.export_workers",
        "must be >= 1, or null for the usable CPUs",
    )
    need(
        0 <= p.manifest.validation_share < 0.5,
        "manifest.validation_share",
        "must be in [0, 0.5) (a share of each super-cluster's documents; 0.01 holds out 1%)",
    )
    need(p.manifest.seq_length >= 8, "manifest.seq_length", "must be >= 8 (tokens a sequence)")
    need(p.manifest.global_batch_size >= 1, "manifest.global_batch_size", "must be >= 1")
    need(bool(p.manifest.license.strip()), "manifest.license", "must name the licence")
    known_exports = ("megatron", "hf", "climblab", "tokenizer")
    for name in p.manifest.exports:
        need(name in known_exports, "manifest.exports", f"has '{name}'; allowed: {known_exports}")
    need(p.deployment.gpu.count >= 1, "deployment.gpu.count", "must be >= 1")
    need(p.deployment.max_concurrent >= 1, "deployment.max_concurrent", "must be >= 1")
    need(
        p.deployment.confirm_above_hours is None or p.deployment.confirm_above_hours > 0,
        "deployment.confirm_above_hours",
        "must be > 0 (or null to never ask)",
    )
    target_names = [t.name for t in p.targets]
    need(len(set(target_names)) == len(target_names), "targets", "has duplicate names")
    for t in p.targets:
        need(t.weight > 0, f"targets[{t.name}].weight", "must be > 0")


def search_trade_offs(p: Profile) -> list[str]:
    """One line for each safeguard of the search that the profile turns off, saying what is lost."""
    s = p.search
    if not s.runs_rounds:
        return []
    lines = []
    if not s.anchors:
        lines.append(
            "search.anchors is empty: round 1 trains no training-free reference, so the search "
            "can miss a mixture as good as target_aligned or natural without ever measuring it"
        )
    if s.noise_replicates == 0:
        lines.append(
            "search.noise_replicates is 0: no proxy noise floor is measured, so no round can "
            "warn that its proxies cannot tell its mixtures apart"
        )
    if s.final != "confirmed":
        lines.append(
            f"search.final is {s.final}: no confirmation proxy; the manifest ships a mixture "
            "chosen without comparing it, measured, with the best proxy and the anchors"
        )
    if p.predictor.trust_floor is None:
        lines.append(
            "predictor.trust_floor is null: a predictor steers the rounds however badly it "
            "cross-validates (no model-free fallback)"
        )
    return lines


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotation `tp`, building nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ProfileError as exc:
                errors.append(str(exc))
        raise ProfileError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is not valid")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ProfileError(f"{key}: {value!r} is not allowed; use one of {list(allowed)}")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ProfileError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ProfileError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ProfileError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ProfileError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise ProfileError(
                f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
            )
        return value
    raise ProfileError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _build(cls: Any, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ProfileError(f"{prefix or 'profile'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ProfileError(
            f"unknown key '{where}{unknown[0]}'; allowed keys{' in ' + prefix if prefix else ''}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ProfileError(f"{prefix or 'profile'}: missing required key '{missing[0]}'")
    return cls(**kwargs)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve_profile_file(name_or_path: str, relative_to: Path | None = None) -> Path:
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_absolute() and relative_to is not None:
            candidate = relative_to / candidate
        if not candidate.is_file():
            raise ProfileError(f"profile file {candidate} does not exist")
        return candidate
    shipped = PROFILES_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ProfileError(
            f"unknown profile '{name_or_path}'; shipped profiles: {', '.join(names)} "
            "(or set CLIMB_CONFIG to a YAML file)"
        )
    return shipped


MAX_PROFILE_BYTES = 1 << 20
"""A profile larger than this (1 MiB) is refused before it is parsed."""
MAX_PROFILE_NODES = 100_000
"""Values a profile may hold once its aliases are expanded; bounds a YAML alias bomb."""
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key repeated in one mapping (PyYAML keeps the last) and a
    document whose aliases expand beyond `MAX_PROFILE_NODES` values.

    Merge keys (`<<: *base`) keep working: the check covers a mapping's own keys, before
    PyYAML folds the merged ones in (where an own key overrides a merged one, as YAML says).
    """

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key '{key}' on line {line} (first on line {seen[key]}); "
                    "merge the two blocks into one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node) -> None:
    """Raises when the document, its aliases expanded, holds more than `MAX_PROFILE_NODES`
    values, or when an alias refers to a node that contains it (it would never end). Each
    distinct node is sized once, so the check itself stays linear in the text."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the path from the root to the node being sized
    # An iterative post-order walk: a deep document cannot exhaust Python's stack.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else list(node.value)
        )
        if not children_done:
            if id(node) in open_nodes:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    "an alias refers to a node that contains it (a recursive alias); "
                    "write the settings out instead",
                    node.start_mark,
                )  # fmt: skip
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        open_nodes.discard(id(node))
        size = 1 + sum(sizes[id(c)] for c in children)
        sizes[id(node)] = size
        if size > MAX_PROFILE_NODES:
            raise yaml.constructor.ConstructorError(
                None, None,
                f"aliases expand to more than {MAX_PROFILE_NODES:,} values (an alias bomb?); "
                "write the settings out instead of nesting aliases",
                node.start_mark,
            )  # fmt: skip


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ProfileError(f"profile {path} extends itself through {[str(s) for s in seen]}")
    size = path.stat().st_size
    if size > MAX_PROFILE_BYTES:
        raise ProfileError(
            f"profile {path} is {size:,} bytes, above the {MAX_PROFILE_BYTES:,} a profile may "
            "have; keep data (targets, corpora) in files the profile names"
        )
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as exc:
        raise ProfileError(f"profile {path} is not UTF-8 text: {exc}") from exc
    except yaml.MarkedYAMLError as exc:  # one line: where, and what
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        what = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ProfileError(f"profile {path}{where} is not valid YAML: {what}") from exc
    except yaml.YAMLError as exc:
        raise ProfileError(f"profile {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path} must be a mapping of settings")
    # Top-level `x-` keys hold anchors for the settings to alias (as in Compose files).
    data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    parent = data.pop("extends", None)
    if parent is not None:
        base = _read_yaml(_resolve_profile_file(str(parent), path.parent), (*seen, path))
        base.pop("name", None)
        data = _deep_merge(base, data)
    return data


def profile_from_dict(data: dict[str, Any]) -> Profile:
    """Validates plain data (as parsed from YAML) into a `Profile`."""
    return _build(Profile, data, "")


def load_profile(name_or_path: str | None = None) -> Profile:
    """Loads a profile by shipped name or YAML path; None follows CLIMB_CONFIG / CLIMB_PROFILE."""
    if name_or_path is None:
        name_or_path = os.environ.get("CLIMB_CONFIG") or os.environ.get(
            "CLIMB_PROFILE", DEFAULT_PROFILE
        )
    path = _resolve_profile_file(name_or_path)
    data = _read_yaml(path)
    data.setdefault("name", path.stem)
    try:
        return profile_from_dict(data)
    except ProfileError as exc:
        raise ProfileError(f"{path}: {exc}") from exc


def deployment_kind(profile: Profile) -> str:
    """`CLIMB_DEPLOYMENT` (local, k8s, ecs) if set, else the profile's deployment.kind."""
    kind = os.environ.get("CLIMB_DEPLOYMENT") or profile.deployment.kind
    if kind not in ("local", "k8s", "ecs"):
        raise ProfileError(f"CLIMB_DEPLOYMENT={kind!r} is not allowed; use local, k8s or ecs")
    return kind


def resolve_location(location: str) -> str:
    """Absolute form of a local path (relative to CLIMB_HOME or cwd); `s3://` URLs unchanged."""
    if "://" in location:
        return location
    base = Path(os.environ.get("CLIMB_HOME", os.getcwd()))
    path = Path(location).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())
