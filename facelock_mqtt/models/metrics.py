"""Verification metrics: all-pairs scores, thresholds at a false-accept rate, LFW 10-fold.

Convention used everywhere: a comparison is accepted when its score is strictly above the
threshold.
"""

from __future__ import annotations

import numpy as np

FARS = (1e-3, 1e-4, 1e-5, 1e-6)


def far_key(far: float) -> str:
    return f"{far:.0e}".replace("e-0", "e-")  # 1e-4 -> "1e-4"


def all_pairs_scores(embeddings: np.ndarray, labels: list[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores of every same-identity pair and every cross-identity pair (i < j)."""
    labels = np.asarray(labels)
    scores = embeddings @ embeddings.T
    upper = np.triu_indices(len(labels), k=1)
    same = labels[upper[0]] == labels[upper[1]]
    flat = scores[upper]
    return flat[same].astype(np.float32), flat[~same].astype(np.float32)


def threshold_at_far(impostor: np.ndarray, far: float) -> float:
    """The smallest threshold with at most floor(far * n) impostor scores strictly above it."""
    if len(impostor) == 0:
        raise ValueError("no impostor scores")
    allowed = int(np.floor(far * len(impostor)))
    if allowed == 0:
        return float(impostor.max())
    # The (allowed+1)-th largest score: exactly `allowed` scores lie above it (ties aside).
    return float(np.partition(impostor, len(impostor) - allowed - 1)[len(impostor) - allowed - 1])


def supports(n_impostor: int, far: float) -> bool:
    """Rule of three: zero errors in n trials bounds the rate below 3/n at 95 % confidence."""
    return n_impostor * far >= 3.0


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, fars=FARS) -> dict[str, dict[str, float | bool]]:
    table = {}
    for far in fars:
        threshold = threshold_at_far(impostor, far)
        table[far_key(far)] = {
            "far": far,
            "threshold": threshold,
            "tar": float(np.mean(genuine > threshold)) if len(genuine) else float("nan"),
            "supported": supports(len(impostor), far),
        }
    return table


def _best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    candidates = np.unique(scores)
    order = np.argsort(scores)
    sorted_same = same[order]
    # Accuracy when accepting everything above candidate c, for all candidates at once.
    positives_below = np.cumsum(sorted_same)
    negatives_below = np.cumsum(~sorted_same)
    index = np.searchsorted(scores[order], candidates, side="right") - 1
    correct = negatives_below[index] + (sorted_same.sum() - positives_below[index])
    best = int(np.argmax(correct))
    # Midway to the next score up: the edge of the margin would favour rejecting on held-out data.
    return float((candidates[best] + candidates[best + 1]) / 2 if best + 1 < len(candidates) else candidates[best])


def lfw_10fold(scores: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[float, float]:
    """Mean and std of held-out accuracy, the threshold chosen on the other nine folds."""
    accuracies = []
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        threshold = _best_threshold(scores[train], same[train])
        accuracies.append(float(np.mean((scores[test] > threshold) == same[test])))
    return float(np.mean(accuracies)), float(np.std(accuracies))
