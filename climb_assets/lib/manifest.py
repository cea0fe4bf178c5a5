"""The ClimbMix manifest: token budgets under a repetition cap, document selection, exports."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from climb_assets.lib.storage import Store


class ManifestError(ValueError):
    """A manifest request that cannot be met as asked."""


@dataclass(frozen=True)
class TokenBudget:
    """Tokens to draw from each super-cluster, after the repetition cap."""

    requested: np.ndarray
    granted: np.ndarray
    available: np.ndarray
    epochs: np.ndarray
    redistributed: int
    shortfall: int
    capped: list[int]


def token_budget(
    weights: np.ndarray, available: np.ndarray, total_tokens: int, max_epochs: float
) -> TokenBudget:
    """Splits `total_tokens` by `weights`, capping each super-cluster at `max_epochs` passes.

    Tokens a capped super-cluster cannot supply go to the uncapped ones in proportion to their
    weights (water-filling), repeated until nothing is left or every cluster is at its cap; what
    no cluster can supply is reported as `shortfall` instead of failing.
    """
    if total_tokens <= 0:
        raise ManifestError("manifest.total_tokens must be > 0 (the tokens to train on)")
    weights = np.asarray(weights, dtype=np.float64)
    available = np.asarray(available, dtype=np.float64)
    cap = np.floor(available * max_epochs)
    requested = weights * total_tokens
    granted = np.zeros_like(weights)
    remaining = float(total_tokens)
    active = (weights > 0) & (cap > 0)
    while remaining >= 1 and active.any():
        share = weights * active
        share /= share.sum()
        offer = remaining * share
        room = cap - granted
        take = np.minimum(offer, room)
        granted += take
        remaining -= float(take.sum())
        active &= (cap - granted) >= 1
    granted = np.floor(granted).astype(np.int64)
    capped = [int(i) for i in np.flatnonzero((granted >= cap - 1) & (requested > cap))]
    return TokenBudget(
        requested=np.round(requested).astype(np.int64),
        granted=granted,
        available=available.astype(np.int64),
        epochs=np.divide(granted, available, out=np.zeros_like(weights), where=available > 0),
        redistributed=int(np.clip(granted - requested, 0, None).sum()),
        shortfall=int(max(0, total_tokens - int(granted.sum()))),
        capped=capped,
    )


def order_keys(doc_ids: Sequence[str], seed: int, salt: str = "") -> np.ndarray:
    """Each document's seeded 64-bit key (BLAKE2b of salt, seed and id): its place in the
    seeded order, which depends only on the id. Computable a batch of ids at a time."""
    keys = b"".join(
        hashlib.blake2b(f"{salt}{seed}:{d}".encode(), digest_size=8).digest() for d in doc_ids
    )
    # Big-endian digests read as integers compare as the digests do.
    return np.frombuffer(keys, dtype=">u8").astype(np.uint64)


def stable_order(doc_ids: Sequence[str], seed: int, salt: str = "") -> np.ndarray:
    """A seeded order of documents that depends only on each id (not on input order).

    A `salt` gives an order independent of the unsalted one for the same seed (the validation
    hold-out is drawn with one, so it is not the head of the training order).
    """
    return key_order(order_keys(doc_ids, seed, salt))


def key_order(keys: np.ndarray) -> np.ndarray:
    """Positions sorted by `order_keys` (ties, which need equal 64-bit digests, by position),
    in 8 bytes a document rather than Python objects."""
    return np.argsort(np.asarray(keys, np.uint64), kind="stable").astype(np.int64)


VALIDATION_SALT = "validation:"


def validation_count(n_documents: int, share: float) -> int:
    """Documents of a super-cluster held out for validation: `share` of them, rounded, at least
    one when there are two or more, never all (a super-cluster keeps a training document)."""
    if share <= 0 or n_documents < 2:
        return 0
    return min(n_documents - 1, max(1, round(share * n_documents)))


def hold_out_validation(doc_ids: Sequence[str], share: float, seed: int) -> np.ndarray:
    """A mask of the documents held out for validation (`validation_count` of them, seeded).

    The choice depends only on the ids, the share and the seed, not on the mixture's weights,
    so every search over the same corpus validates on the same documents.
    """
    return hold_out_by_keys(order_keys(doc_ids, seed, salt=VALIDATION_SALT), share)


def hold_out_by_keys(keys: np.ndarray, share: float) -> np.ndarray:
    """`hold_out_validation` from the documents' validation keys (`order_keys` salted with
    `VALIDATION_SALT`): the `validation_count` smallest."""
    held = np.zeros(len(keys), bool)
    n = validation_count(len(keys), share)
    if n:
        held[key_order(keys)[:n]] = True
    return held


def select_documents(
    doc_ids: Sequence[str],
    n_tokens: np.ndarray,
    budget: int,
    seed: int,
    tolerance: float = 0.01,
) -> tuple[np.ndarray, np.ndarray]:
    """Documents (indices) and their pass number that fill `budget` tokens.

    Whole passes over the cluster come first (each in the seeded stable order), then a partial
    pass takes whole documents near the head of that order whose tokens come closest to what is
    left of the budget (`partial_pass`): one long document never multiplies the tokens granted,
    and long ones (split pieces of ~18k tokens against a budget of 50k) do not leave the budget
    short when smaller documents can make up the difference. Each document is in a pass at most
    once, so no document is repeated more than the full passes plus one. `tolerance` (relative
    to the partial pass's tokens) is how far the order-following fill may land before the
    partial pass looks further.
    """
    return select_by_keys(order_keys(doc_ids, seed), n_tokens, budget, tolerance)


def select_by_keys(
    keys: np.ndarray, n_tokens: np.ndarray, budget: int, tolerance: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """`select_documents` from the documents' keys (`order_keys` with the manifest's seed)."""
    n_tokens = np.asarray(n_tokens, dtype=np.int64)
    if len(keys) == 0 or budget <= 0 or n_tokens.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    order = key_order(keys)
    total = int(n_tokens.sum())
    full, rest = divmod(int(budget), total)
    picks = [order] * full
    passes = [np.full(len(order), p, np.int32) for p in range(full)]
    if rest:
        partial = partial_pass(n_tokens[order], rest, tolerance)
        picks.append(order[partial])
        passes.append(np.full(len(partial), full, np.int32))
    return np.concatenate(picks), np.concatenate(passes)


def partial_pass(sizes: np.ndarray, budget: int, tolerance: float = 0.01) -> np.ndarray:
    """Positions (in order) of whole documents of `sizes` whose tokens come closest to `budget`.

    First the under-fill: the longest prefix that fits, then each later document that still
    fits in what is left; the smallest document left out is added if that ends nearer to the
    budget than stopping short. When that is still more than `tolerance` of the budget away (the
    documents left out are all long: split pieces of ~18k tokens against a budget of 50k), a
    swap: the first document left out (the next in the order), or else the smallest, is taken
    and the latest selected documents that fit in the overshoot are dropped. That lands within
    `tolerance` whenever the documents of at most `tolerance` of the budget hold as many tokens
    as the longest one; when it does not, a subset-sum (`_nearest_subset`) finds the nearest
    whole-document total when its search is small enough. Whatever is nearest wins
    (ties: the earlier step). A cluster of few long documents may have no total within
    `tolerance` at all: only splitting them finer (corpus.max_chars) can help it. Deterministic:
    integer arithmetic on the order given.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    n = len(sizes)
    cumulative = np.cumsum(sizes)
    k = int(np.searchsorted(cumulative, budget, side="right"))
    left = budget - (int(cumulative[k - 1]) if k else 0)
    extra, left = _take_fitting(sizes, np.arange(k, n, dtype=np.int64), left)
    under = np.concatenate([np.arange(k, dtype=np.int64), extra])
    if left <= 0 or len(under) == n:
        return under
    out = np.ones(n, bool)
    out[under] = False
    smallest = int(np.flatnonzero(out)[np.argmin(sizes[out])])
    best, error = under, left
    if int(sizes[smallest]) - left < left:  # overshooting by less than we fall short
        best, error = np.sort(np.append(under, smallest)), int(sizes[smallest]) - left
    if error <= tolerance * budget:
        return best
    # `under` is in increasing position: reversed, the trim drops the latest documents first.
    for swap in dict.fromkeys((k, smallest)):
        dropped, over = _take_fitting(sizes, under[::-1], int(sizes[swap]) - left)
        if over < error:
            kept = np.setdiff1d(under, dropped, assume_unique=True)
            best, error = np.sort(np.append(kept, swap)), over
    if error > tolerance * budget:
        nearest = _nearest_subset(sizes, budget, error)
        if nearest is not None:
            best = nearest
    return best


def _nearest_subset(
    sizes: np.ndarray,
    budget: int,
    worse: int,
    max_cells: int = 50_000_000,
    max_totals: int = 1 << 23,
) -> np.ndarray | None:
    """Positions of whole documents whose sum is nearest to `budget` (ties: under it), when it
    is nearer than `worse` tokens away; None when none is or the search would be too large.

    The head of the order is kept up to eight of its longest documents short of the budget; the
    rest is a subset-sum over the documents after it, in order, as many as `max_cells`
    (documents times totals) allows. Each total remembers the first document that reached it,
    so the documents found lean on the head of the order. At most `max_totals` totals (5 bytes
    each) are searched.
    """
    longest = int(sizes[sizes < budget + worse].max(initial=0))
    cumulative = np.cumsum(sizes)
    head = int(np.searchsorted(cumulative, budget - min(budget, 8 * longest), side="right"))
    target = budget - (int(cumulative[head - 1]) if head else 0)
    width = target + worse  # totals 0 .. width - 1 of the documents after the head
    if width > max_totals:
        return None
    first = np.full(width, -1, np.int32)  # the document that first reached each total
    reached = np.zeros(width, bool)
    reached[0] = True
    for i in range(head, min(len(sizes), head + max(1, max_cells // width))):
        s = int(sizes[i])
        if 0 < s < width:
            new = np.flatnonzero(reached[: width - s] & ~reached[s:]) + s
            first[new] = i
            reached[new] = True
    totals = np.flatnonzero(reached)
    total = int(totals[np.lexsort((totals > target, np.abs(totals - target)))[0]])
    if abs(total - target) >= worse:
        return None
    picks = list(range(head))
    while total:
        i = int(first[total])
        picks.append(i)
        total -= int(sizes[i])
    return np.sort(np.asarray(picks, np.int64))


def _take_fitting(sizes: np.ndarray, candidates: np.ndarray, room: int) -> tuple[np.ndarray, int]:
    """The `candidates` (positions) taken one by one, in their order, whenever one still fits in
    `room` tokens, and the room left: runs of consecutive fitting documents go at once."""
    taken = []
    candidates = candidates[sizes[candidates] <= room]
    while room > 0 and len(candidates):
        cumulative = np.cumsum(sizes[candidates])
        fit = int(np.searchsorted(cumulative, room, side="right"))  # >= 1: all fit alone
        taken.append(candidates[:fit])
        room -= int(cumulative[fit - 1])
        candidates = candidates[fit + 1 :]  # the next one no longer fits
        candidates = candidates[sizes[candidates] <= room]
    return (np.concatenate(taken) if taken else np.zeros(0, np.int64)), room


def dominated_by_few(n_tokens: np.ndarray, top: int = 5, share: float = 0.5) -> float | None:
    """The share of tokens held by the `top` longest documents when it exceeds `share`."""
    n_tokens = np.asarray(n_tokens, dtype=np.int64)
    total = int(n_tokens.sum())
    if total == 0 or len(n_tokens) <= top:
        return None
    held = float(np.sort(n_tokens)[-top:].sum()) / total
    return held if held > share else None


def check_token_accounting(
    granted: np.ndarray, exported: np.ndarray, tolerance: float = 0.01
) -> dict[str, object]:
    """Compares the tokens the budget granted with those the selected documents hold.

    Each super-cluster with a budget must land within `tolerance` (relative) of it, or within
    one document's worth when that is all the cluster can do; the totals within `tolerance`.
    """
    granted = np.asarray(granted, np.int64)
    exported = np.asarray(exported, np.int64)
    total_g, total_e = int(granted.sum()), int(exported.sum())
    rel = abs(total_e - total_g) / total_g if total_g else 0.0
    off = [
        int(i)
        for i in np.flatnonzero(granted > 0)
        if abs(int(exported[i]) - int(granted[i])) > tolerance * int(granted[i])
    ]
    ok = rel <= tolerance
    note = (
        f"selected documents hold {total_e} tokens against {total_g} granted "
        f"({rel:.2%} apart; tolerance {tolerance:.0%})"
        + (f"; super-clusters off by more than the tolerance: {off}" if off else "")
    )
    return {"within_tolerance": ok, "relative_error": rel, "off_super_clusters": off, "note": note}


class SelectionDigest:
    """Identity of a manifest: its weights, seed and selected (document, pass) rows, fed in the
    order they were selected, any number of rows at a time (`add`).

    Exports built from a manifest with the same digest are complete and are not rebuilt.
    """

    # Part of the identity: manifests written by an earlier order of rows or parts are new.
    FORMAT = "rows in selection order; parts in part-order-key order"

    def __init__(self, weights: np.ndarray, seed: int) -> None:
        self._hash = hashlib.sha256(self.FORMAT.encode())
        self._hash.update(np.round(np.asarray(weights, np.float64), 12).tobytes())
        self._hash.update(str(seed).encode())

    def add(self, rows: pl.DataFrame) -> None:
        """Rows with `doc_id`, `super_cluster_id` and `pass`; each row is hashed on its own, so
        how the rows are batched does not matter."""
        if not rows.height:
            return
        line = pl.concat_str(
            [pl.col("doc_id"), pl.col("super_cluster_id").cast(pl.String),
             pl.col("pass").cast(pl.String)],
            separator="\x1f",
        )  # fmt: skip
        text = rows.select(line).to_series().str.join("\x1e").item()
        self._hash.update(f"{text}\x1e".encode())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()[:16]


def megatron_blend(weights: np.ndarray, prefixes: Sequence[str]) -> list[float | str]:
    """Megatron-LM `--data-path` blend: weight, prefix, weight, prefix...; zero weights left out."""
    blend: list[float | str] = []
    for w, prefix in zip(weights.tolist(), prefixes, strict=True):
        if w > 0:
            blend += [round(float(w), 6), prefix]
    return blend


PART_ORDER_SALT = "part-order:"


def part_order_keys(doc_ids: Sequence[str], passes: np.ndarray, seed: int) -> np.ndarray:
    """Each selected row's 64-bit key in its output's seeded order: `order_keys` of its pass and
    id, so a row's place depends on nothing else that was selected, and a document's passes are
    spread independently."""
    rows = zip(np.asarray(passes, np.int64).tolist(), doc_ids, strict=True)
    return order_keys([f"{p}:{d}" for p, d in rows], seed, PART_ORDER_SALT)


PART_SCHEMA = {
    "doc_id": pl.String, "cluster_id": pl.Int32, "n_tokens": pl.Int64,
    "super_cluster_id": pl.Int32, "pass": pl.Int32, "text": pl.String,
}  # fmt: skip
"""The columns of a manifest part."""

ROW_COLUMNS = tuple(PART_SCHEMA)[:-1]
"""What a selected row brings to `ShuffledSplits.add`, besides where it was read from."""

TextReader = Callable[[int, np.ndarray], Iterable[tuple[slice, pa.Table]]]
"""`(shard, rows)` -> the corpus shard's `doc_id` and `text` at the increasing positions `rows`,
as `(span, table)` read batches (`Store.iter_parquet_rows`)."""


class ShuffledSplits:
    """Selected rows written with their text as shuffled Parquet parts, in one corpus pass.

    Each output (a folder and its number of parts) puts its rows in one seeded order, by key
    (`part_order_keys`), cut into contiguous parts of equal size (as `np.array_split`). Rows are
    added a super-cluster at a time (`add`, with the corpus shard and row each was read from)
    and staged by corpus shard; `write` finds each output's part boundaries from a key
    histogram and its boundary bins, reads each corpus shard's texts for its staged rows only
    (by row position, checked by id), then sorts each part into place and writes it atomically.
    A part of more than `SORT_BYTES` of text is sorted out of core: its rows are spread over
    key ranges of about half that (keys are uniform hashes, so equal-width ranges hold about
    equal rows), and each range is sorted and appended to the part as row groups. Memory holds
    the histograms, one shard's staged rows with their texts, or `SORT_BYTES` of text: never a
    whole selection, nor a whole part.
    """

    BITS = 16  # histogram bins: the keys' top bits
    SORT_BYTES = 64 << 20
    """Text a part is sorted in memory up to; a larger part is sorted a key range at a time."""

    def __init__(
        self,
        store: Store,
        outputs: dict[str, int],
        seed: int,
        optional: Iterable[str] = (),
        staging: str = "manifest/_staging",
    ) -> None:
        """`outputs` maps a folder to its number of parts; an `optional` folder is written only
        when rows were added to it (else its old parts are removed)."""
        for folder, n_parts in outputs.items():
            if n_parts < 1:
                raise ManifestError(f"{folder}: {n_parts} parts asked; write at least 1 part")
        self.store, self.outputs, self.seed, self.staging = store, dict(outputs), seed, staging
        self.optional = set(optional)
        self._out = {folder: i for i, folder in enumerate(outputs)}
        self._hist = np.zeros((len(outputs), 1 << self.BITS), np.int64)
        self._added = 0
        store.remove(staging)

    def _bin(self, keys: np.ndarray) -> np.ndarray:
        return (np.asarray(keys, np.uint64) >> np.uint64(64 - self.BITS)).astype(np.int64)

    def add(self, folder: str, rows: pl.DataFrame) -> None:
        """Rows of `ROW_COLUMNS` plus `shard` (the corpus shard's number in `write`'s reader)
        and `row` (the document's position in that shard)."""
        if not rows.height:
            return
        keys = part_order_keys(
            rows.get_column("doc_id").to_list(), rows.get_column("pass").to_numpy(), self.seed
        )
        out = self._out[folder]
        self._hist[out] += np.bincount(self._bin(keys), minlength=self._hist.shape[1])
        staged = rows.select(*ROW_COLUMNS, "shard", "row").with_columns(
            pl.Series("_key", keys, pl.UInt64), pl.lit(out, pl.Int32).alias("_out")
        )
        for (shard,), group in staged.partition_by("shard", as_dict=True).items():
            rel = f"{self.staging}/rows/s{int(shard):05d}/a{self._added:06d}.parquet"
            self.store.write_parquet(rel, group.drop("shard").to_arrow())
        self._added += 1

    def _boundaries(self) -> list[np.ndarray]:
        """Each output's part boundaries: the key at the first rank of each later part (ranks
        past the last row left out), from the histogram and the keys of the boundary bins."""
        running = np.cumsum(self._hist, axis=1)
        ranks, wanted = [], set()
        for out, n_parts in enumerate(self.outputs.values()):
            n = int(running[out, -1])
            sizes = [len(a) for a in np.array_split(np.arange(n), n_parts)]
            starts = [r for r in np.cumsum(sizes)[:-1].tolist() if r < n]
            bins = np.searchsorted(running[out], starts, side="right").tolist()
            ranks.append(list(zip(starts, bins, strict=True)))
            wanted |= {(out, b) for b in bins}
        found: dict[tuple[int, int], list[np.ndarray]] = {w: [] for w in wanted}
        if wanted:
            for rel in self.store.list(f"{self.staging}/rows", (".parquet",)):
                table = self.store.read_parquet(rel, ["_key", "_out"])
                keys = table.column("_key").to_numpy()
                outs = table.column("_out").to_numpy()
                bins = self._bin(keys)
                for out, b in wanted:
                    at = (outs == out) & (bins == b)
                    if at.any():
                        found[(out, b)].append(keys[at])
        bounds = []
        for out, pairs in enumerate(ranks):
            edges = []
            for rank, b in pairs:
                before = int(running[out, b - 1]) if b else 0
                keys = np.sort(np.concatenate(found[(out, b)]))
                edges.append(keys[rank - before])
            bounds.append(np.asarray(edges, np.uint64))
        return bounds

    def write(self, n_shards: int, texts: TextReader) -> dict[str, list[str]]:
        """Reads the staged rows' texts from each of the `n_shards` corpus shards and writes
        every output's parts; returns the URIs of each folder's parts, in order.

        Raises:
            ManifestError: A staged row's document is not at its place in the corpus (the corpus
                changed after the clusters were tokenized).
        """
        store, staging = self.store, self.staging
        bounds = self._boundaries()
        total, found = int(self._hist.sum()), 0
        columns = [*PART_SCHEMA, "_key"]
        part_bytes: dict[tuple[int, int], int] = {}
        for j in range(n_shards):
            files = store.list(f"{staging}/rows/s{j:05d}", (".parquet",))
            if not files:
                continue
            rows = pl.concat([pl.from_arrow(store.read_parquet(f)) for f in files])
            unique = np.unique(rows.get_column("row").to_numpy())
            ids, text = np.empty(unique.size, object), np.empty(unique.size, object)
            for span, batch in texts(j, unique):
                ids[span] = batch.column("doc_id").to_pylist()
                text[span] = batch.column("text").to_pylist()
            read = pl.DataFrame(
                {"row": unique, "_doc": ids.tolist(), "text": text.tolist()},
                schema={"row": pl.Int64, "_doc": pl.String, "text": pl.String},
            )
            joined = rows.join(read, on="row", how="left").filter(
                pl.col("_doc") == pl.col("doc_id")  # a row read elsewhere, or not at all: null
            )
            found += joined.height
            keys, outs = joined.get_column("_key").to_numpy(), joined.get_column("_out").to_numpy()
            part = np.zeros(joined.height, np.int32)
            for out, edges in enumerate(bounds):
                at = outs == out
                part[at] = np.searchsorted(edges, keys[at], side="right")
            joined = joined.with_columns(pl.Series("_part", part))
            for (out, i), group in joined.partition_by("_out", "_part", as_dict=True).items():
                rel = f"{staging}/out-{int(out)}/part-{int(i):05d}/s{j:05d}.parquet"
                store.write_parquet(rel, group.select(columns).cast(PART_SCHEMA).to_arrow())
                at = (int(out), int(i))
                part_bytes[at] = part_bytes.get(at, 0) + _text_bytes(group)
        if found != total:
            store.remove(staging)
            raise ManifestError(
                f"{total - found} of {total} selected rows have no text in the corpus: the "
                "corpus changed after cluster_tokens was built; re-run the data side and the search"
            )
        written: dict[str, list[str]] = {}
        for out, (folder, n_parts) in enumerate(self.outputs.items()):
            for old in store.list(folder):
                store.remove(old)
            if folder in self.optional and not self._hist[out].any():
                continue
            paths = []
            for i in range(n_parts):
                rel = f"{folder}/part-{i:05d}.parquet"
                size = part_bytes.get((out, i), 0)
                if size > self.SORT_BYTES:
                    span = (
                        bounds[out][i - 1] if i else 0,
                        bounds[out][i] if i < len(bounds[out]) else 1 << 64,
                    )
                    paths.append(self._write_by_ranges(out, i, size, span, rel))
                    continue
                files = store.list(f"{staging}/out-{out}/part-{i:05d}")
                frames = [pl.from_arrow(store.read_parquet(f)) for f in files]
                part = (
                    _in_key_order(pl.concat(frames)) if frames else pl.DataFrame(schema=PART_SCHEMA)
                )
                paths.append(store.write_parquet(rel, part.to_arrow()))
            written[folder] = paths
        store.remove(staging)
        return written

    def _write_by_ranges(self, out: int, i: int, size: int, span: tuple[int, int], rel: str) -> str:
        """Writes part `i` of output `out` (`size` bytes of text, keys in `span` = [lo, hi))
        a key range at a time: the same rows in the same order as sorting it whole."""
        store, staged = self.store, f"{self.staging}/out-{out}/part-{i:05d}"
        ranges = -(-2 * size // self.SORT_BYTES)
        lo, hi = (int(x) for x in span)
        width = -(-(hi - lo) // ranges)
        held: list[pl.DataFrame] = []
        held_bytes, batch = 0, 0

        def spread() -> None:  # the held rows to their key ranges' files
            nonlocal held, held_bytes, batch
            rows = pl.concat(held)
            offset = rows.get_column("_key").to_numpy() - np.uint64(lo)
            which = (offset // np.uint64(width)).astype(np.int32)
            rows = rows.with_columns(pl.Series("_range", which))
            for (g,), group in rows.partition_by("_range", as_dict=True).items():
                name = f"{staged}/ranges/r{int(g):05d}/b{batch:05d}.parquet"
                store.write_parquet(name, group.drop("_range").to_arrow())
            held, held_bytes, batch = [], 0, batch + 1

        for f in store.list(staged, (".parquet",)):
            frame = pl.from_arrow(store.read_parquet(f))
            held.append(frame)
            held_bytes += _text_bytes(frame)
            if held_bytes >= self.SORT_BYTES // 2:
                spread()
        if held:
            spread()
        schema = pl.DataFrame(schema=PART_SCHEMA).to_arrow().schema
        with store.parquet_writer(rel, schema) as writer:
            for g in range(ranges):
                files = store.list(f"{staged}/ranges/r{g:05d}", (".parquet",))
                if files:
                    frames = [pl.from_arrow(store.read_parquet(f)) for f in files]
                    writer.write_table(_in_key_order(pl.concat(frames)).to_arrow())
        return store.uri(rel)


def _in_key_order(rows: pl.DataFrame) -> pl.DataFrame:
    """Staged rows in their part's order, without the key."""
    return rows.sort("_key", "doc_id", "pass").drop("_key")


def _text_bytes(rows: pl.DataFrame) -> int:
    return int(rows.get_column("text").str.len_bytes().sum() or 0)
