"""Shingle hashing, MinHash band keys and LSH bucketing for :mod:`tunewise.data.neardup`.

Phases 3-5 of its pipeline: 64-bit word-n-gram hashes, band keys per text, candidate pairs per band.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunewise.core.progress import progress as rich_progress

_U64 = np.uint64
_MASK32 = _U64(0xFFFFFFFF)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
_NGRAM_MULT = _U64(0x9E3779B97F4A7C15)

# A bucket (texts sharing one band key) larger than this is not expanded into all its pairs:
# each member is paired with the bucket's first member and with its neighbour in the order of
# the next band's key. Exact duplicates are already collapsed, so such buckets hold texts that
# agree on a whole band (near-identical templates), where links to one anchor keep the cluster
# connected; a near-duplicate pair split by this rule is still found in the other bands.
MAX_BUCKET = 64


def phase_progress(description: str, total: int, enabled: bool, unit: str = "texts"):
    if not enabled:
        return nullcontext(lambda n=1, **_: None)

    return rich_progress(description, total, unit=unit)


# ---------------------------------------------------------------------------------------------
# hashing


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place on a uint64 array (numpy wraps on overflow)."""
    x ^= x >> _U64(30)
    x *= _MIX1
    x ^= x >> _U64(27)
    x *= _MIX2
    x ^= x >> _U64(31)
    return x


def _word_hashes(words: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(stable 64-bit hash per word occurrence, byte length per occurrence)."""
    encoded = pc.dictionary_encode(words)
    vocab = encoded.dictionary.to_pylist()
    # blake2b runs once per distinct word, not per occurrence; stable across processes and seeds.
    vocab_hash = np.fromiter(
        (int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little") for w in vocab),
        dtype=np.uint64,
        count=len(vocab),
    )
    vocab_len = np.fromiter((len(w) for w in vocab), dtype=np.int64, count=len(vocab))
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    return vocab_hash[codes], vocab_len[codes]


def shingle_hashes(uniques: pa.Array, shingle: int) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash per shingle, shingle offsets per text): text u owns [off[u], off[u+1]).

    Shingles come out grouped by text, in word order, repeats included (MinHash ignores them;
    the Jaccard check takes sets).
    """
    n_texts = len(uniques)
    tokens = pc.split_pattern(uniques, pattern=" ")
    list_offsets = tokens.offsets.to_numpy()
    word_hash, word_len = _word_hashes(tokens.flatten())
    keep = word_len > 0  # "" splits into one empty token
    text_of_word = np.repeat(np.arange(n_texts, dtype=np.int64), np.diff(list_offsets))[keep]
    word_hash = word_hash[keep]
    n_all = len(word_hash)
    sh_off = np.zeros(n_texts + 1, dtype=np.int64)
    if n_all == 0:
        return word_hash, sh_off

    # The shingle starting at word k mixes in words k+1 .. k+shingle-1 while they belong to the
    # same text: shifted views of one padded array, no per-shingle gathers. It is kept when its
    # window is complete, or when k is the first word of a text too short for a full window.
    span = shingle - 1
    owner = np.concatenate((text_of_word, np.full(span, -1, dtype=np.int64)))
    padded = np.concatenate((word_hash, np.zeros(span, dtype=np.uint64)))
    h = word_hash.copy()
    for t in range(1, shingle):
        mixed = _mix64(h * _NGRAM_MULT + padded[t : t + n_all])
        np.copyto(h, mixed, where=owner[t : t + n_all] == text_of_word)
    keep = owner[span : span + n_all] == text_of_word  # complete window
    keep[0] = True
    keep[1:] |= text_of_word[1:] != text_of_word[:-1]  # first word of a text
    np.cumsum(np.bincount(text_of_word[keep], minlength=n_texts), out=sh_off[1:])
    return h[keep], sh_off


# ---------------------------------------------------------------------------------------------
# MinHash and LSH


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | _U64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def _band_keys_batch(
    x32: np.ndarray, seg_starts: np.ndarray, a: np.ndarray, b: np.ndarray, bands: int, rows: int
) -> np.ndarray:
    """Band keys (bands, texts) for one batch of texts whose shingles are ``x32`` (segments)."""
    used = bands * rows
    values = np.multiply.outer(a[:used], x32)  # (perm, shingle) uint64, wraps mod 2**64
    values += b[:used, None]
    values >>= _U64(32)
    signature = np.minimum.reduceat(values, seg_starts, axis=1)  # (perm, text), < 2**32
    del values
    signature = signature.reshape(bands, rows, -1)
    key = signature[:, 0, :].copy()
    for r in range(1, rows):
        key *= _NGRAM_MULT
        key += signature[:, r, :]
        _mix64(key)
    return key


def band_keys(
    sh_hash: np.ndarray,
    sh_off: np.ndarray,
    live: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    bands: int,
    rows: int,
    workers: int,
    progress: bool,
    max_batch_shingles: int = 1 << 16,
) -> np.ndarray:
    """(bands, len(live)) uint64 band keys; batches of texts run on ``workers`` threads (numpy
    releases the GIL inside ufunc loops, so threads use both cores without pickling arrays)."""
    n_live = len(live)
    keys = np.empty((bands, n_live), dtype=np.uint64)
    if n_live == 0:
        return keys
    starts, ends = sh_off[live], sh_off[live + 1]
    # batch boundaries: consecutive live texts holding about max_batch_shingles shingles, so one
    # batch's (perm, shingle) matrix stays near 64 MiB
    cum = np.cumsum(ends - starts)
    cuts = np.searchsorted(cum, np.arange(max_batch_shingles, int(cum[-1]), max_batch_shingles))
    bounds = np.unique(np.concatenate(([0], cuts, [n_live])))

    def run(k: int) -> int:
        lo, hi = int(bounds[k]), int(bounds[k + 1])
        s0 = starts[lo:hi]
        x32 = sh_hash[s0[0] : ends[hi - 1]] & _MASK32
        keys[:, lo:hi] = _band_keys_batch(x32, s0 - s0[0], a, b, bands, rows)
        return hi - lo

    with (
        phase_progress("near-dup: minhash", n_live, progress) as advance,
        ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        for done in pool.map(run, range(len(bounds) - 1)):
            advance(done)
    return keys


def bucket_pairs(band_key: np.ndarray, next_key: np.ndarray, max_bucket: int) -> tuple[np.ndarray, int]:
    """Candidate pairs (codes i*n+j, i<j, live indices) from texts sharing ``band_key``.

    Returns (codes, number of capped buckets).
    """
    n = len(band_key)
    # Sort (key prefix | index) packed in one uint64: a plain sort is far faster than argsort,
    # and members of a bucket come out in index order. Dropping the key's low bits only merges
    # buckets by chance (n^2 / 2^(64 - index bits), ~0.03 per band at a million texts); such a
    # pair is a spurious candidate that verification rejects.
    index_bits = max(1, (n - 1).bit_length())
    low = _U64((1 << index_bits) - 1)
    packed = (band_key & ~low) | np.arange(n, dtype=np.uint64)
    packed.sort()
    order = (packed & low).astype(np.int64)
    prefix = packed >> _U64(index_bits)
    boundary = np.flatnonzero(prefix[1:] != prefix[:-1]) + 1
    run_start = np.concatenate(([0], boundary))
    run_len = np.diff(np.concatenate((run_start, [n])))
    out: list[np.ndarray] = []
    multi = run_len >= 2
    for size in np.flatnonzero(np.bincount(run_len[multi & (run_len <= max_bucket)], minlength=1)):
        starts = run_start[run_len == size]
        members = order[starts[:, None] + np.arange(size)]  # (buckets, size), ascending rows
        ii, jj = np.triu_indices(int(size), 1)
        out.append((members[:, ii] * n + members[:, jj]).ravel())
    big = run_len > max_bucket
    if big.any():
        # capped buckets: every member links to the bucket's first (smallest) member, and to its
        # neighbour when the bucket is ordered by the next band's key
        run_of = np.repeat(np.arange(len(run_start)), run_len)
        pos = np.flatnonzero(big[run_of])
        rid = run_of[pos]
        members = order[pos]
        anchor = order[run_start[rid]]
        not_anchor = pos != run_start[rid]
        out.append(anchor[not_anchor] * n + members[not_anchor])
        by_next = np.lexsort((next_key[members], rid))
        chain, chain_rid = members[by_next], rid[by_next]
        same = chain_rid[1:] == chain_rid[:-1]
        lo = np.minimum(chain[:-1], chain[1:])[same]
        hi = np.maximum(chain[:-1], chain[1:])[same]
        out.append(lo * n + hi)
    codes = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
    return codes.astype(np.int64, copy=False), int(big.sum())
