"""Label scoring with a causal LM: log P(label | prompt) for every label, one forward pass per batch over a trie of the labels, the prompts' shared prefix computed once."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tunewise.core.progress import progress
from tunewise.llm.chat import end_of_turn_ids, render as _render

# Upper bound on floats held by one batch's logits (B x kept positions x vocabulary): 64M floats
# is 256 MB in float32. The batch is cut down to fit, so 77 labels do not exhaust memory.
MAX_LOGIT_FLOATS = 64_000_000
MIN_BATCHES_PER_WORKER = 4  # score_continuations(workers=...): fewer batches than this a worker, fewer workers


def answer_continuations(model: Any, tokenizer: Any, answers: Sequence[str]) -> list[list[int]]:
    """Token ids of each answer as the assistant's turn, up to and including the end-of-turn token.

    Taken from the chat template itself (conversation with the answer minus conversation without),
    so the tokens are exactly those the model would produce after the generation prompt.
    """
    probe = [{"role": "user", "content": "x"}]
    prompt = tokenizer(_render(tokenizer, [probe])[0], add_special_tokens=False)["input_ids"]
    end_ids = end_of_turn_ids(tokenizer, model)
    continuations = []
    for answer in answers:
        text = tokenizer.apply_chat_template(probe + [{"role": "assistant", "content": answer}], tokenize=False)
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
        if full[: len(prompt)] == prompt and len(full) > len(prompt):
            tail = full[len(prompt) :]
            cut = next((i + 1 for i, t in enumerate(tail) if t in end_ids), len(tail))
            continuations.append(tail[:cut])
        else:  # a template that rewrites earlier turns: fall back to the answer plus end of turn
            ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            continuations.append(ids + ([min(end_ids)] if end_ids else []))
    return continuations


@dataclass
class ContinuationScores:
    """Log-likelihoods of every continuation after every prompt."""

    logprob_sum: np.ndarray  # (examples, continuations): sum of token log-probabilities; -inf: not scored
    n_tokens: np.ndarray  # (continuations,): tokens per continuation, end-of-turn included
    latency_ms: np.ndarray  # (examples,): amortised wall time per example

    def scores(self, how: Literal["mean", "sum"]) -> np.ndarray:
        return self.logprob_sum / self.n_tokens[None, :] if how == "mean" else self.logprob_sum


@dataclass
class _Trie:
    """Continuations as a prefix tree; nodes are numbered parents first."""

    token: np.ndarray  # (nodes,) token id of each node
    parent: np.ndarray  # (nodes,) parent node, -1 for a first token
    depth: np.ndarray  # (nodes,) 0 for a first token
    fed: np.ndarray  # nodes with children, fed to the model after the prompt (their logits predict children)
    source: np.ndarray  # (nodes,) row of the kept logits that predicts the node: 0 = last prompt token
    ancestors: np.ndarray  # (fed, fed) bool: fed node i may attend fed node j (j is i or an ancestor of i)
    membership: np.ndarray  # (nodes, continuations) 1.0 where the node lies on the continuation's path


def _build_trie(continuations: Sequence[Sequence[int]]) -> _Trie:
    index: dict[tuple[int, int], int] = {}
    token, parent, depth, paths = [], [], [], []
    for seq in continuations:
        if not seq:
            raise ValueError("every continuation needs at least one token")
        node, path = -1, []
        for d, t in enumerate(seq):
            key = (node, int(t))
            if key not in index:
                index[key] = len(token)
                token.append(int(t))
                parent.append(node)
                depth.append(d)
            node = index[key]
            path.append(node)
        paths.append(path)
    parent_arr = np.array(parent, dtype=np.int64)
    has_child = np.zeros(len(token), dtype=bool)
    has_child[parent_arr[parent_arr >= 0]] = True
    fed = np.flatnonzero(has_child)
    fed_pos = np.full(len(token), -1, dtype=np.int64)
    fed_pos[fed] = np.arange(len(fed))
    source = np.where(parent_arr < 0, 0, 1 + fed_pos[np.maximum(parent_arr, 0)])
    ancestors = np.zeros((len(fed), len(fed)), dtype=bool)
    for i, node in enumerate(fed):
        while node >= 0:  # every ancestor of a fed node has a child, so it is fed too
            ancestors[i, fed_pos[node]] = True
            node = parent_arr[node]
    membership = np.zeros((len(token), len(paths)), dtype=np.float64)
    for j, path in enumerate(paths):
        membership[path, j] = 1.0
    return _Trie(
        np.array(token, dtype=np.int64), parent_arr, np.array(depth, dtype=np.int64), fed, source, ancestors, membership
    )


def _common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all prompts share, leaving each prompt at least one own token."""
    shortest = min(len(p) for p in prompts)
    first = prompts[0]
    n = 0
    while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def score_continuations(
    model: Any,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    shortlist: np.ndarray | Sequence[Sequence[int]] | None = None,
    batch_size: int = 8,
    description: str = "scoring labels",
    pad_token_id: int = 0,
    workers: int = 1,
) -> ContinuationScores:
    """log P(continuation | prompt) for every prompt and continuation, one forward pass per batch.

    See the module docstring for the trie and the shared-prefix KV cache. ``prompts`` are token
    ids that end where the answer starts (after the chat template's generation prompt).

    ``shortlist`` (one row of continuation indices per prompt) scores only those continuations for
    that prompt: each prompt gets the trie of its own shortlist, padded to the longest in the batch,
    so the cost per example falls with the shortlist (the trie nodes are most of the tokens fed
    over 77 labels). Continuations off a prompt's shortlist get ``-inf``.

    ``workers`` > 1 runs that many batches at once, each in its own thread with an equal share of
    torch's threads (see :func:`scoring_workers`). Batches are the same as with one worker (cut from
    the same length order, dealt out in turn), so each row is scored in the same company. A call
    with fewer than ``MIN_BATCHES_PER_WORKER`` batches a worker uses fewer workers.
    """
    import torch

    n, n_labels = len(prompts), len(continuations)
    n_tokens = np.array([len(c) for c in continuations], dtype=np.float64)
    if shortlist is None:
        full = _build_trie(continuations)
        tries, label_ids = [full] * n, [np.arange(n_labels)] * n
    else:
        # one trie per distinct shortlist (as a set, in label order: with every label on it, the trie
        # is the full one); neighbouring messages often share a shortlist
        built: dict[tuple[int, ...], _Trie] = {}
        tries, label_ids = [], []
        for row in shortlist:
            key = tuple(sorted({int(j) for j in row}))
            if key not in built:
                built[key] = _build_trie([continuations[j] for j in key])
            tries.append(built[key])
            label_ids.append(np.array(key, dtype=np.int64))
        if len(tries) != n:
            raise ValueError(f"shortlist has {len(tries)} rows for {n} prompts")
    logprob_sum = np.full((n, n_labels), 0.0 if shortlist is None else -np.inf, dtype=np.float64)
    latency_ms = np.zeros(n, dtype=np.float64)
    if n == 0:
        return ContinuationScores(logprob_sum, n_tokens, latency_ms)
    vocab = model.get_output_embeddings().weight.shape[0]
    max_fed = max(len(t.fed) for t in tries)
    batch_size = max(1, min(batch_size, MAX_LOGIT_FLOATS // ((max_fed + 1) * vocab)))
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    blocked = torch.finfo(dtype).min

    tensors: dict[int, tuple] = {}  # per trie: (fed tokens, fed depth, ancestors, node source, node token, membership)

    def trie_tensors(trie: _Trie) -> tuple:
        if id(trie) not in tensors:
            tensors[id(trie)] = (
                torch.as_tensor(trie.token[trie.fed], device=device),
                torch.as_tensor(trie.depth[trie.fed], device=device),
                torch.as_tensor(trie.ancestors, device=device),
                torch.as_tensor(trie.source, device=device),
                torch.as_tensor(trie.token, device=device),
                torch.as_tensor(trie.membership, dtype=torch.float32, device=device),
            )
        return tensors[id(trie)]

    with torch.inference_mode(), progress(description, n) as advance:
        started = time.perf_counter()
        shared = _common_prefix_length(prompts)
        prefix_cache = None
        if shared:
            prefix_ids = torch.as_tensor([list(prompts[0][:shared])], device=device)
            prefix_cache = model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1).past_key_values
        prefix_ms = (time.perf_counter() - started) * 1000 / n

        order = np.argsort([len(p) for p in prompts], kind="stable")

        def score_batch(start: int) -> None:
            batch_started = time.perf_counter()
            rows = order[start : start + batch_size]
            suffixes = [list(prompts[i][shared:]) for i in rows]
            lengths = torch.as_tensor([len(s) for s in suffixes], device=device)
            width = int(lengths.max())
            fed = max(len(tries[i].fed) for i in rows)  # shorter tries are padded to this
            b, seq = len(rows), width + fed

            input_ids = torch.full((b, seq), pad_token_id, dtype=torch.long, device=device)
            for r, suffix in enumerate(suffixes):  # left padding: every prompt ends at column width-1
                input_ids[r, width - len(suffix) : width] = torch.as_tensor(suffix, device=device)

            column = torch.arange(width, device=device)
            real = column[None, :] >= (width - lengths)[:, None]  # (b, width) not padding
            positions = torch.empty((b, seq), dtype=torch.long, device=device)
            positions[:, :width] = shared + (column[None, :] - (width - lengths)[:, None]).clamp(min=0)
            positions[:, width:] = (shared + lengths)[:, None]  # trie padding; real nodes add their depth below

            # allowed[b, query, key] over keys = shared prefix + this batch's columns
            allowed = torch.zeros((b, seq, shared + seq), dtype=torch.bool, device=device)
            allowed[:, :, :shared] = True
            causal = column[:, None] >= column[None, :]
            allowed[:, :width, shared : shared + width] = causal[None] & real[:, None, :]
            allowed[:, width:, shared : shared + width] = real[:, None, :]
            for r, i in enumerate(rows):
                fed_tokens, fed_depth, fed_ancestors, *_ = trie_tensors(tries[i])
                f = len(fed_tokens)
                input_ids[r, width : width + f] = fed_tokens
                positions[r, width : width + f] += fed_depth
                allowed[r, width : width + f, shared + width : shared + width + f] = fed_ancestors
            # a padding query with no real key would give NaN rows; let it see itself (nobody reads it)
            allowed[:, torch.arange(seq), shared + torch.arange(seq)] = True
            mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, blocked)[:, None]

            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(b)
            logits = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=cache is not None,
                logits_to_keep=fed + 1,
            ).logits.float()  # (b, 1 + fed, vocab): last prompt token, then the fed trie nodes
            normaliser = torch.logsumexp(logits, dim=-1)  # (b, 1 + fed)
            for r, i in enumerate(rows):
                *_, node_source, node_token, membership = trie_tensors(tries[i])
                node_logprob = logits[r, node_source, node_token] - normaliser[r, node_source]
                logprob_sum[i, label_ids[i]] = (node_logprob @ membership).double().cpu().numpy()
            latency_ms[rows] = (time.perf_counter() - batch_started) * 1000 / b + prefix_ms
            advance(b)

        starts = list(range(0, n, batch_size))
        # a worker needs a few batches: dealt out in turn, a short call leaves one worker idle at the
        # end, and starting the threads costs more than it saves (25-row calls ran 0.83x)
        workers = max(1, min(workers, len(starts) // MIN_BATCHES_PER_WORKER))
        if workers == 1:
            for start in starts:
                score_batch(start)
        else:

            def score_share(share: list[int]) -> None:
                with torch.inference_mode():  # grad mode is per thread
                    for start in share:
                        score_batch(start)

            with _threads_per_worker(workers), ThreadPoolExecutor(workers, thread_name_prefix="score") as pool:
                for done in [pool.submit(score_share, starts[w::workers]) for w in range(workers)]:
                    done.result()
    return ContinuationScores(logprob_sum, n_tokens, latency_ms)


def scoring_workers(setting: int | str) -> int:
    """Batches scored at once for ``setting`` (a number, or ``"auto"``).

    auto is 2 on a machine where torch has at least 2 threads, else 1. Why: one forward pass of a
    small LLM on a short batch keeps two cores only partly busy (thread hand-offs around many small
    matrix products, and single-threaded elementwise work between them). On this project's 2-core
    machine, SmolLM2-135M few-shot scoring of BANKING77 ran at 9.7 rows/s with one batch on 2 threads
    and 12.3 rows/s with two batches on 1 thread each (``bench/bench_shortlist.py`` measures both).
    More than 2 Python threads would wait on each other for the interpreter between operations.
    """
    if setting == "auto":
        import torch

        return 2 if torch.get_num_threads() >= 2 else 1
    if isinstance(setting, bool) or not isinstance(setting, (int, np.integer)) or setting < 1:
        raise ValueError(f"scoring workers must be 'auto' or a number >= 1, not {setting!r}")
    return int(setting)


# torch's thread count is one setting for the whole process: the first scoring call to go parallel
# saves it and the last to finish restores it, so overlapping calls (two served models) leave it as
# they found it.
_threads_lock = threading.Lock()
_threads_users = 0
_threads_saved = 0


@contextmanager
def _threads_per_worker(workers: int) -> Iterator[None]:
    import torch

    global _threads_users, _threads_saved
    with _threads_lock:
        if _threads_users == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(max(1, _threads_saved // workers))
        _threads_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_users -= 1
            if _threads_users == 0:
                torch.set_num_threads(_threads_saved)


def score_continuations_naive(
    model: Any, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
) -> np.ndarray:
    """Reference: one forward pass of prompt + continuation for every pair. Slow; for tests and timing."""
    import torch

    device = next(model.parameters()).device
    out = np.zeros((len(prompts), len(continuations)), dtype=np.float64)
    with torch.inference_mode():
        for i, prompt in enumerate(prompts):
            for j, continuation in enumerate(continuations):
                ids = torch.as_tensor([list(prompt) + list(continuation)], device=device)
                logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                out[i, j] = logprobs[torch.arange(len(continuation)), torch.as_tensor(list(continuation))].sum().item()
    return out
