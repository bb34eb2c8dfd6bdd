"""Near-duplicate detection at scale: MinHash + LSH banding, an exact Jaccard check, clustering.

Pipeline (each phase timed in ``NearDupResult.stats``):

1. normalise (``tunewise.core.text.dedup_keys``): NFKC, lowercase, digit runs (with inner ``.,:/-``) -> ``0``, apostrophes dropped,
   other punctuation and symbols -> space, whitespace collapsed (datatrove's dedup normalisation,
   minus accent stripping). Numbers collapse on purpose: "order #12345678" and "order #98765432"
   are the same request.
2. exact duplicates: rows with equal normalised text form one group; only the group's first row
   goes through MinHash (so a thousand copies of one text never make a thousand-member bucket).
3. shingles: word ``shingle``-grams; a text with fewer words than ``shingle`` is one shingle of
   all its words; a text that normalises to "" has no shingles and is never paired.
   Words hash with blake2b (stable across processes, unlike ``hash(str)``), an n-gram is an
   order-sensitive 64-bit mix of its word hashes, computed in numpy.
4. MinHash: ``num_perm`` multiply-shift hashes ``(a*x + b) >> 32`` of the shingle's low 32 bits
   (a strongly universal family for 32-bit keys), minimum per text with ``np.minimum.reduceat``.
5. LSH: ``bands`` x ``rows`` of the signature, each band folded to one 64-bit key; candidates are
   pairs that share a key in at least ``min_matches`` bands (see :func:`lsh_params`), found by
   sorting keys (no per-text Python dict). Oversized buckets are capped (see ``MAX_BUCKET``).
6. verify: the exact Jaccard of the two texts' shingle sets (rows of a sparse binary matrix), for
   every candidate; only pairs with Jaccard >= threshold are reported, so precision is 1 by
   construction (up to 64-bit hash collisions between different shingles).
7. cluster: connected components over verified pairs and exact-duplicate links; the cluster id
   is the smallest row index in it, and that row is the cluster's representative.

Why hand-written rather than datasketch: datasketch's MinHash and MinHashLSH run a Python loop
per text (update, insert, query), which caps them near 2,000 texts/s; here every phase is a numpy
operation over whole batches, which is what makes a million texts fit in a minute or two.
:func:`datasketch_reference` keeps that plain loop as the oracle for tests and the benchmark.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

from tunewise.core.text import arrow_texts as _to_arrow, dedup_keys, dedup_keys_arrow
from tunewise.data.minhash_lsh import MAX_BUCKET, band_keys, bucket_pairs, permutations, phase_progress, shingle_hashes

__all__ = [
    "NearDupResult",
    "find_near_duplicates",
    "exact_duplicate_groups",
    "lsh_params",
    "datasketch_reference",
]


@dataclass
class NearDupResult:
    """Outcome of :func:`find_near_duplicates` over ``n`` rows.

    ``pairs`` are the verified links, not the transitive closure: an exact-duplicate row is
    linked to its group's first row, and a near-duplicate link between two exact-duplicate groups
    is reported once, between their first rows. Use ``cluster`` for "is row i a copy of row j".
    """

    pairs: np.ndarray  # (k, 2) int64, row indices, i < j, sorted
    jaccard: np.ndarray  # (k,) float32, exact Jaccard of the shingle sets, >= threshold
    cluster: np.ndarray  # (n,) int64, smallest row index of the row's cluster
    representative: np.ndarray  # (n,) bool, True for the one row kept per cluster
    stats: dict = field(default_factory=dict)  # timings per phase (s) and counts
    # (n,) int64, first row with the same normalised text (see exact_duplicate_groups)
    exact_group: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# normalisation and exact duplicates


def _normalise_parallel(arr: pa.Array, workers: int) -> pa.Array:
    """:func:`tunewise.core.text.dedup_keys_arrow` over ``workers`` slices on threads (Arrow kernels release the GIL)."""
    if workers < 2 or len(arr) < 50_000:
        return dedup_keys_arrow(arr)
    step = -(-len(arr) // workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(dedup_keys_arrow, [arr.slice(k, step) for k in range(0, len(arr), step)]))
    return pa.concat_arrays(parts)


def _unique_codes(normalised: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(code per row, first row per code, unique normalised texts in first-row order)."""
    encoded = pc.dictionary_encode(normalised)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    uniques = encoded.dictionary
    first_row = np.full(len(uniques), len(codes), dtype=np.int64)
    np.minimum.at(first_row, codes, np.arange(len(codes), dtype=np.int64))
    # Arrow numbers dictionary entries in order of first appearance; rely on it only after checking.
    order = np.argsort(first_row, kind="stable")
    if not np.array_equal(order, np.arange(len(order))):
        remap = np.empty_like(order)
        remap[order] = np.arange(len(order))
        codes, first_row, uniques = remap[codes], first_row[order], uniques.take(pa.array(order))
    return codes, first_row, uniques


def exact_duplicate_groups(texts: Sequence[str]) -> np.ndarray:
    """Group id per row: the index of the first row whose normalised text is the same.

    Rows that normalise to "" (empty, only punctuation) form one group too.
    """
    codes, first_row, _ = _unique_codes(dedup_keys_arrow(_to_arrow(texts)))
    return first_row[codes] if len(codes) else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# sorted-array helpers


def _first_of_runs(sorted_values: np.ndarray) -> np.ndarray:
    """True where a sorted array's value differs from the previous one."""
    first = np.empty(len(sorted_values), dtype=bool)
    first[:1] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=first[1:])
    return first


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique for large integer arrays: numpy 2.4's np.unique takes a hash-table path that is
    ~100x slower here than its own (SIMD) sort."""
    ordered = np.sort(values)
    return ordered[_first_of_runs(ordered)]


def _runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, count of each) of a sorted array."""
    if len(sorted_values) == 0:
        return sorted_values, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], sorted_values[1:] != sorted_values[:-1])))
    return sorted_values[starts], np.diff(np.append(starts, len(sorted_values)))


# ---------------------------------------------------------------------------------------------
# LSH parameters


def _candidate_probability(similarity: float, bands: int, rows: int, min_matches: int) -> float:
    """Chance that a pair with this Jaccard shares a key in at least ``min_matches`` of ``bands``
    bands of ``rows`` rows (bands are independent: each uses its own permutations)."""
    p = similarity**rows
    below = sum(math.comb(bands, k) * p**k * (1.0 - p) ** (bands - k) for k in range(min_matches))
    return max(0.0, 1.0 - below)


def lsh_params(threshold: float, num_perm: int, target_recall: float = 0.99) -> tuple[int, int, int]:
    """(bands, rows, min_matches) for the LSH stage.

    A pair becomes a candidate when it shares a band key in at least ``min_matches`` bands.
    Among the choices that make a pair with Jaccard exactly ``threshold`` a candidate with
    chance >= ``target_recall`` (pairs above it more surely), take the one with the least area
    under the candidate-probability curve below the threshold: the fewest chance candidates to
    verify. Requiring 2-3 matching bands instead of 1 cuts chance candidates tenfold or more at
    the same recall (at 0.7 and 128 permutations: 32 bands of 4 rows, 3 matches).
    """
    if not 0.0 < threshold <= 1.0 or num_perm < 1:
        raise ValueError(f"need 0 < threshold <= 1 and num_perm >= 1, got {threshold}, {num_perm}")
    grid = [k / 100 * threshold for k in range(101)]
    best: tuple[float, tuple[int, int, int]] | None = None
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        for min_matches in range(1, min(bands, 4) + 1):
            if _candidate_probability(threshold, bands, rows, min_matches) < target_recall:
                continue
            curve = [_candidate_probability(s, bands, rows, min_matches) for s in grid]
            area = sum(curve) / len(curve) * threshold
            if best is None or area < best[0]:
                best = (area, (bands, rows, min_matches))
    return best[1] if best else (num_perm, 1, 1)


# ---------------------------------------------------------------------------------------------
# exact Jaccard


def _shingle_sets(sh_hash: np.ndarray, sh_off: np.ndarray, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Shingle sets of ``texts`` (a few of all), as dense ids sorted within each text.

    Returns (dense ids, set offsets per entry of ``texts``, number of distinct ids): the columns,
    row offsets and width of a binary CSR matrix. Only texts that are in some candidate pair
    need them, so the sort stays small.
    """
    idx, local = _segment_gather(sh_off[texts], sh_off[texts + 1] - sh_off[texts])
    set_off = np.zeros(len(texts) + 1, dtype=np.int64)
    if len(idx) == 0:
        return np.zeros(0, dtype=np.int64), set_off, 0
    hashes = sh_hash[idx]
    order = np.argsort(hashes)
    new = _first_of_runs(hashes[order])
    dense = np.empty(len(hashes), dtype=np.int64)
    dense[order] = np.cumsum(new) - 1
    n_vocab = int(new.sum())
    key = _sorted_unique(local * n_vocab + dense)  # sorted by text, then id; repeats gone
    set_text, set_ids = np.divmod(key, n_vocab)
    np.cumsum(np.bincount(set_text, minlength=len(texts)), out=set_off[1:])
    return set_ids, set_off, n_vocab


def _segment_gather(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat element indices of all segments, segment number of each element)."""
    seg = np.repeat(np.arange(len(starts), dtype=np.int64), lengths)
    seg_start = np.zeros(len(starts), dtype=np.int64)
    np.cumsum(lengths[:-1], out=seg_start[1:])
    idx = np.arange(len(seg), dtype=np.int64) + np.repeat(starts - seg_start, lengths)
    return idx, seg


def _exact_jaccard(left: np.ndarray, right: np.ndarray, sets: csr_matrix) -> np.ndarray:
    """Exact Jaccard of the shingle sets (rows of a binary CSR matrix) of ``left[p]`` and
    ``right[p]`` for every p: scipy's sparse element-wise product merges the two sorted id lists
    of each pair in C, several times faster than a numpy search over (pair, id) keys."""
    size = np.diff(sets.indptr)
    inter = np.asarray(sets[left].multiply(sets[right]).sum(axis=1)).ravel()
    union = size[left] + size[right] - inter
    return inter / np.maximum(union, 1)


# ---------------------------------------------------------------------------------------------
# the engine


def find_near_duplicates(
    texts: Sequence[str],
    threshold: float = 0.7,
    num_perm: int = 128,
    shingle: int = 3,
    seed: int = 1,
    progress: bool = False,
    *,
    bands: int | None = None,
    rows: int | None = None,
    min_matches: int | None = None,
    max_bucket: int = MAX_BUCKET,
    workers: int | None = None,
    verify_batch: int = 1 << 19,
) -> NearDupResult:
    """Pairs of rows whose word-``shingle``-gram sets have Jaccard >= ``threshold``, and clusters.

    ``bands``/``rows``/``min_matches`` default to :func:`lsh_params` (about 99% chance of
    catching a pair at exactly the threshold, more above it). ``workers`` threads share the
    normalising, MinHash, LSH and verify phases (default: the CPU count, at most 2). The result
    is deterministic for a given ``seed``; rows that are None or NaN count as empty text.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm < 1 or shingle < 1 or max_bucket < 2:
        raise ValueError(
            f"num_perm and shingle must be >= 1 and max_bucket >= 2; got {num_perm}, {shingle}, {max_bucket}"
        )
    if (bands is None) != (rows is None):
        raise ValueError("give both bands and rows, or neither")
    if bands is None or rows is None:
        bands, rows, auto_matches = lsh_params(threshold, num_perm)
        min_matches = min_matches or auto_matches
    min_matches = min_matches or 1
    if not 1 <= min_matches <= bands:
        raise ValueError(f"min_matches must be in [1, bands={bands}], got {min_matches}")
    if bands * rows > num_perm:
        raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {num_perm}")
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    timings: dict[str, float] = {}
    t_start = clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    # 1-2. normalise, collapse exact duplicates
    codes, first_row, uniques = _unique_codes(_normalise_parallel(_to_arrow(texts), workers))
    n = len(codes)
    exact_group = first_row[codes] if n else np.zeros(0, dtype=np.int64)
    lap("normalise_s")

    # 3. shingles of the distinct texts
    sh_hash, sh_off = shingle_hashes(uniques, shingle)
    sh_len = np.diff(sh_off)
    live = np.flatnonzero(sh_len > 0)  # distinct texts with content
    lap("shingle_s")

    # 4. MinHash -> band keys
    a, b = permutations(num_perm, seed)
    keys = band_keys(sh_hash, sh_off, live, a, b, bands, rows, workers, progress)
    lap("minhash_s")

    # 5. LSH candidates (live indices): pairs sharing a key in >= min_matches bands
    def band_pairs(k: int) -> tuple[np.ndarray, int]:
        # keys is deleted below only after the pool has run every band
        band_codes, n_capped = bucket_pairs(keys[k], keys[(k + 1) % bands], max_bucket)  # noqa: F821
        return _sorted_unique(band_codes), n_capped  # one vote per band, even from a capped bucket

    per_band_capped = []
    with (
        phase_progress("near-dup: lsh", bands, progress, "bands") as advance,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        for band_result in pool.map(band_pairs, range(bands)):  # sorts release the GIL
            per_band_capped.append(band_result)
            advance(1)
    per_band = [codes_k for codes_k, _ in per_band_capped]
    capped = sum(n_capped for _, n_capped in per_band_capped)
    del keys, per_band_capped
    collisions = np.sort(np.concatenate(per_band)) if per_band else np.zeros(0, dtype=np.int64)
    del per_band
    candidates, votes = _runs(collisions)
    raw = len(collisions)
    del collisions
    candidates = candidates[votes >= min_matches]
    lap("lsh_s")

    # 6. exact Jaccard of every candidate
    n_live = max(len(live), 1)
    kept_codes: list[np.ndarray] = []
    kept_jac: list[np.ndarray] = []
    involved = _sorted_unique(np.concatenate(np.divmod(candidates, n_live)))  # live indices
    set_ids, set_off, n_vocab = _shingle_sets(sh_hash, sh_off, live[involved])
    sets = csr_matrix((np.ones(len(set_ids), dtype=np.int32), set_ids, set_off), shape=(len(involved), max(n_vocab, 1)))
    sets.has_sorted_indices = True  # ids ascend within each text, no repeats
    del sh_hash, set_ids

    def verify(lo: int) -> tuple[np.ndarray, np.ndarray]:
        chunk = candidates[lo : lo + verify_batch]
        li, lj = np.divmod(chunk, n_live)
        jac = _exact_jaccard(np.searchsorted(involved, li), np.searchsorted(involved, lj), sets)
        ok = jac >= threshold
        return chunk[ok], jac[ok]

    with (
        phase_progress("near-dup: verify", len(candidates), progress, "pairs") as advance,
        ThreadPoolExecutor(workers) as pool,
    ):
        for lo, (codes_ok, jac_ok) in zip(
            range(0, len(candidates), verify_batch), pool.map(verify, range(0, len(candidates), verify_batch))
        ):
            kept_codes.append(codes_ok)  # pool.map keeps chunk order, so codes stay sorted
            kept_jac.append(jac_ok)
            advance(min(verify_batch, len(candidates) - lo))
    verified = np.concatenate(kept_codes) if kept_codes else np.zeros(0, dtype=np.int64)
    near_jac = np.concatenate(kept_jac) if kept_jac else np.zeros(0)
    li, lj = np.divmod(verified, n_live)
    near_i, near_j = first_row[live[li]], first_row[live[lj]]  # first_row ascends with code: i < j
    lap("verify_s")

    # 7. clusters: near links plus exact-duplicate links of rows with content
    rows_idx = np.arange(n, dtype=np.int64)
    has_content = sh_len[codes] > 0 if n else np.zeros(0, dtype=bool)
    dup_rows = np.flatnonzero((exact_group != rows_idx) & has_content)
    pair_i = np.concatenate((near_i, exact_group[dup_rows]))
    pair_j = np.concatenate((near_j, dup_rows))
    pair_jac = np.concatenate((near_jac, np.ones(len(dup_rows)))).astype(np.float32)
    order = np.lexsort((pair_j, pair_i))
    pairs = np.stack((pair_i[order], pair_j[order]), axis=1).astype(np.int64)
    pair_jac = pair_jac[order]
    if n:
        graph = coo_matrix((np.ones(len(pair_i), dtype=np.int8), (pair_i, pair_j)), shape=(n, n)).tocsr()
        n_comp, label = connected_components(graph, directed=False)
        smallest = np.full(n_comp, n, dtype=np.int64)
        np.minimum.at(smallest, label, rows_idx)
        cluster = smallest[label]
    else:
        cluster = np.zeros(0, dtype=np.int64)
    representative = cluster == rows_idx
    lap("cluster_s")

    stats = {
        "texts": n,
        "distinct_texts": int(len(uniques)),
        "texts_without_shingles": int(n - has_content.sum()) if n else 0,
        "exact_duplicate_rows": int(len(dup_rows)),
        "shingles": int(sh_off[-1]),
        "texts_verified": int(len(involved)),
        "threshold": threshold,
        "num_perm": num_perm,
        "shingle": shingle,
        "bands": bands,
        "rows": rows,
        "min_matches": min_matches,
        "band_collisions": int(raw),
        "candidates": int(len(candidates)),
        "capped_buckets": int(capped),
        "verified": int(len(verified)),
        "pairs": int(len(pairs)),
        "duplicate_rows": int(n - representative.sum()),
        "timings_s": {**timings, "total_s": round(time.perf_counter() - t_start, 3)},
    }
    return NearDupResult(pairs, pair_jac, cluster, representative, stats, exact_group)


# ---------------------------------------------------------------------------------------------
# reference


def shingle_set(normalised: str, shingle: int = 3) -> set[str]:
    """Word ``shingle``-grams of a normalised text as plain strings (the engine's definition,
    written independently with Python sets: fewer words than ``shingle`` -> one shingle)."""
    words = normalised.split()
    if not words:
        return set()
    if len(words) < shingle:
        return {" ".join(words)}
    return {" ".join(words[k : k + shingle]) for k in range(len(words) - shingle + 1)}


def datasketch_reference(
    texts: Sequence[str],
    threshold: float = 0.7,
    num_perm: int = 128,
    shingle: int = 3,
    *,
    seed: int = 1,
    params: tuple[int, int] | None = None,
) -> set[tuple[int, int]]:
    """The plain loop this engine replaces: datasketch MinHash per text, MinHashLSH insert each,
    query each, then the same exact Jaccard check of each candidate (Python sets).

    Same normalisation and shingles as the engine. ``params`` = (bands, rows) for MinHashLSH;
    default: datasketch's own choice for ``threshold``.
    """
    from datasketch import MinHash, MinHashLSH

    normalised = dedup_keys(texts)
    sets = [shingle_set(t, shingle) for t in normalised]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=params)
    sketches: list[MinHash | None] = []
    for row, shingles in enumerate(sets):
        if not shingles:
            sketches.append(None)
            continue
        sketch = MinHash(num_perm=num_perm, seed=seed)
        for s in shingles:
            sketch.update(s.encode("utf-8"))
        lsh.insert(row, sketch)
        sketches.append(sketch)
    found: set[tuple[int, int]] = set()
    for row, sketch in enumerate(sketches):
        if sketch is None:
            continue
        for other in lsh.query(sketch):
            if other == row:
                continue
            i, j = (row, other) if row < other else (other, row)
            if (i, j) in found:
                continue
            inter = len(sets[i] & sets[j])
            if inter / len(sets[i] | sets[j]) >= threshold:
                found.add((i, j))
    return found
