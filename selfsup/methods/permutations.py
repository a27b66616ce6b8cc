"""Permutation sets for the jigsaw puzzle (Noroozi & Favaro 2016, Sec. 3.2 and Algorithm 1).

A jigsaw network classifies which of P fixed permutations shuffled the 9 tiles. Which P permutations make up
the set decides how hard and how ambiguous the task is: two permutations that differ in only two positions
(Hamming distance 2) ask the network to tell apart two puzzles that differ by one swapped pair of tiles, while a
set whose members all differ in most positions gives clearly distinct classes. The paper builds the set greedily
(Algorithm 1): start from one random permutation, then repeatedly add, from all 9! = 362,880 permutations not yet
chosen, the one farthest from the chosen set. Its ablation (Table 4, repeated in the lecture) compares sets
built with different criteria and sizes; the modes below make those sets.

modes
  max      Algorithm 1 of the paper: the candidate with the largest *summed* (equivalently, average) Hamming
           distance to the chosen permutations. The paper's default; its 1000-set has average distance ~8, minimum 2.
  maximin  the candidate whose *minimum* distance to the chosen permutations is largest (farthest-point
           sampling). Keeps the set's minimum distance as high as greedy search can. The lower rows of Table 4
           vary that minimum (2 to 9 as P shrinks from 100 to 6); maximin gives, e.g., 6 at P = 100.
  min      the candidate with the *smallest* summed distance: crowded sets of similar puzzles (the paper's
           "minimal" set, average distance 4.0 at P = 100, 5.5 at P = 1000). A deliberately bad set, for the ablation.
  random   the first P permutations of a seeded shuffle (average distance ~8, minimum usually 2).

Ties, which are common, are broken by a seeded shuffle of the candidates, so the seed decides both the start and
the tie-breaks. Sets are nested: the first P' of a P-set are the P'-set of the same seed and mode, so the minimum
distance can only fall as P grows.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import torch

from selfsup.errors import SelfSupError

MODES = ("max", "maximin", "min", "random")


@lru_cache(maxsize=2)
def all_permutations(n: int = 9) -> torch.Tensor:
    """Every permutation of range(n) in lexicographic order, (n!, n) int8 (362,880 x 9 for n = 9)."""
    return torch.tensor(list(itertools.permutations(range(n))), dtype=torch.int8)


def hamming_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, n), (Q, n) permutations -> (P, Q) numbers of positions where they differ."""
    return (a[:, None, :] != b[None, :, :]).sum(-1)


def set_distances(perms: torch.Tensor) -> tuple[int, float]:
    """(min, mean) Hamming distance over all pairs of distinct members of a set of P >= 2 permutations."""
    P = perms.shape[0]
    if P < 2:
        return perms.shape[1], float(perms.shape[1])
    d = hamming_matrix(perms, perms)
    off = ~torch.eye(P, dtype=torch.bool)
    return int(d[off].min()), float(d[off].float().mean())


# Greedy sets are nested, so one cached set per (n, seed, mode) serves every smaller P as a prefix.
_SETS: dict[tuple[int, int, str], torch.Tensor] = {}


def _greedy(P: int, n: int, seed: int, mode: str) -> torch.Tensor:
    candidates = all_permutations(n)
    order = torch.randperm(candidates.shape[0], generator=torch.Generator().manual_seed(seed))
    candidates = candidates[order]  # the seeded shuffle: row 0 is the random start, argmax ties go to the first
    if mode == "random":
        return candidates[:P].long()
    N = candidates.shape[0]
    # Distance to permutation q is n minus the positions where a candidate agrees with q. With the candidates as
    # an (n*n, N) table "candidate has value v at position i", the agreements with q are the sum of the n rows
    # (i, q[i]): n passes over N bytes per step. The greedy state is one running number per candidate: the summed
    # agreements with the chosen set (max: smallest wins; min: largest wins) or the largest agreement with any
    # chosen permutation (maximin: smallest wins, i.e. the largest minimum distance).
    onehot = torch.zeros(n * n, N, dtype=torch.uint8)
    onehot[torch.arange(n) * n + candidates.long(), torch.arange(N)[:, None]] = 1
    offsets = [i * n for i in range(n)]

    def agreements(k: int) -> torch.Tensor:
        q = candidates[k].tolist()
        acc = onehot[offsets[0] + q[0]].to(torch.int32)
        for i in range(1, n):
            acc += onehot[offsets[i] + q[i]]
        return acc

    taken_value = -(2 ** 30) if mode == "min" else 2 ** 30  # never picked again, whatever is added later
    pick = 0
    chosen = [pick]
    score = agreements(pick)
    for _ in range(P - 1):
        score[pick] = taken_value
        pick = int(score.argmax() if mode == "min" else score.argmin())  # the first of tied candidates
        chosen.append(pick)
        if mode == "maximin":
            torch.maximum(score, agreements(pick), out=score)
        else:
            score += agreements(pick)
    return candidates[chosen].long()


MAX_SET = 5000  # the paper's largest set is 1000; 5000 already needs a 5000 x 5000 x 9 comparison


def hamming_permutations(P: int, n: int = 9, seed: int = 0, mode: str = "max") -> tuple[torch.Tensor, int]:
    """A greedy set of P distinct permutations of range(n): ((P, n) int64, its minimum pairwise Hamming distance).

    See the module docstring for the modes. P = 1000 over 9! candidates takes a few seconds on a CPU; sets are
    cached in the process, and a cached larger set of the same seed and mode answers at once (sets are nested).
    """
    if mode not in MODES:
        raise SelfSupError(f"unknown permutation-set mode '{mode}'; choose one of {', '.join(MODES)}")
    if n > 9:
        raise SelfSupError(f"permutation sets are built by enumerating all n! permutations; n={n} is too many "
                           "(use a 3x3 grid, n=9)")
    if not 1 <= P <= min(MAX_SET, math.factorial(n)):
        raise SelfSupError(f"a permutation set here holds 1 to {min(MAX_SET, math.factorial(n))} permutations "
                           f"(its P x P distance check grows with P squared), got P={P}; lower method.permutations "
                           "(the paper's largest is 1000)")
    key = (int(n), int(seed), mode)
    if key not in _SETS or len(_SETS[key]) < P:
        threads = torch.get_num_threads()
        # Each step is a few passes over 363k bytes: one thread is fastest, and far faster on a busy machine.
        torch.set_num_threads(1)
        try:
            _SETS[key] = _greedy(int(P), *key)
        finally:
            torch.set_num_threads(threads)
    perms = _SETS[key][:P].clone()
    return perms, set_distances(perms)[0]
