"""Which rows, in which order: the mixed order ``rayssl shard`` writes, and the probes' stratified subsets.

Nothing in rayssl may assume a source is pre-shuffled. A folder walk is sorted, so it comes
class by class, and the first N rows of such a split are its first classes. So the shard
writer spreads every class evenly over each split (``mixed_order``), and every subset a probe
takes is a seeded sample across the whole split, stratified by label (``stratified_sample``).
Both are pure functions of their inputs: a re-run writes the same shards and picks the same rows.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

# Probe subsets are part of the evaluation protocol: one fixed seed, so that every run, trial and
# training seed of a search is probed on the same images and their figures compare.
SUBSET_SEED = 0


def hash_fraction(text: str) -> float:
    """A fixed pseudo-random number in [0, 1) for ``text``: the same on every machine and re-run."""
    digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def mixed_order(ids: Sequence[str], labels: Sequence[int]) -> list[int]:
    """Positions of the items in the order to write them: every class spread evenly over the whole sequence.

    Within a class the items take a hash-seeded order (rank ``r`` of ``n``); item ``r`` gets the sort key
    ``(r + u) / n`` with ``u`` a second hash fraction in [0, 1). So any stretch of the result, a shard
    or the first ``limit`` rows, holds each class (unlabeled rows are a class of their own, -1) in
    proportion to within one item. The keys depend only on the ids: the same order on every re-run,
    whatever order the items were listed in.
    """
    members: dict[int, list[int]] = defaultdict(list)
    for position, label in enumerate(labels):
        members[int(label)].append(position)
    keys: list[tuple[float, str, int]] = []
    for positions in members.values():
        positions.sort(key=lambda p: (hash_fraction("order:" + ids[p]), ids[p]))
        n = len(positions)
        keys.extend(((rank + hash_fraction("spread:" + ids[p])) / n, ids[p], p) for rank, p in enumerate(positions))
    keys.sort()
    return [p for _, _, p in keys]


def stratified_sample(labels: np.ndarray, n: int, seed: int = SUBSET_SEED) -> np.ndarray:
    """Sorted indices of ``min(n, len(labels))`` rows: each label value in proportion, rows within it at random.

    Each value's share is ``n * count / total``; the whole parts are taken, and the rows left over go
    to the largest remainders, so every class is within one row of its proportion.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    values, counts = np.unique(labels, return_counts=True)
    exact = n * counts / len(labels)
    quotas = np.floor(exact).astype(int)
    quotas[np.argsort(-(exact - quotas), kind="stable")[: n - quotas.sum()]] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == v), size=q, replace=False) for v, q in zip(values, quotas, strict=True)]
    return np.sort(np.concatenate(picked))
