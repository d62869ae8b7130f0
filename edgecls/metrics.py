"""The statistics of a parity report, on plain numpy arrays (hand-checkable in tests)."""
from __future__ import annotations

import math

import numpy as np


def bootstrap_ci(hits: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of 0/1 outcomes."""
    hits = np.asarray(hits, dtype=np.float64)
    if hits.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, hits.size, size=(n_boot, hits.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def mcnemar_exact(ref_correct: np.ndarray, cand_correct: np.ndarray) -> float:
    """Exact (binomial) McNemar p-value, two-sided, on the discordant pairs.

    b = reference right and candidate wrong, c = the reverse; under H0 b ~ Bin(b + c, 1/2).
    """
    ref_correct, cand_correct = np.asarray(ref_correct, bool), np.asarray(cand_correct, bool)
    b = int(np.sum(ref_correct & ~cand_correct))
    c = int(np.sum(~ref_correct & cand_correct))
    return mcnemar_from_counts(b, c)


def mcnemar_from_counts(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return (top == np.asarray(labels)[:, None]).any(axis=1)


def log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, cand_logits: np.ndarray) -> np.ndarray:
    """Per-sample KL(p_ref || p_cand) of the softmax distributions, in nats."""
    lp, lq = log_softmax(ref_logits.astype(np.float64)), log_softmax(cand_logits.astype(np.float64))
    return (np.exp(lp) * (lp - lq)).sum(axis=1)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two logit vectors."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


def sqnr_db(signal: np.ndarray, noisy: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    s = np.asarray(signal, np.float64).ravel()
    noise = s - np.asarray(noisy, np.float64).ravel()
    eps = np.finfo(np.float32).eps
    return float(20 * math.log10(max(np.linalg.norm(s), eps) / max(np.linalg.norm(noise), eps)))
