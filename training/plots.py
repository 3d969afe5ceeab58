"""ROC and DET curves as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def curve(genuine: np.ndarray, impostor: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, TAR) at thresholds spread over the score range (accept when score > threshold)."""
    thresholds = np.unique(np.quantile(np.concatenate([genuine, impostor]), np.linspace(0, 1, points)))
    # Also the highest impostor scores: the low-FAR end is where a lock operates.
    tail = np.sort(impostor)[-min(len(impostor), points) :]
    thresholds = np.unique(np.concatenate([thresholds, tail]))
    sorted_g, sorted_i = np.sort(genuine), np.sort(impostor)
    tar = 1.0 - np.searchsorted(sorted_g, thresholds, side="right") / len(sorted_g)
    far = 1.0 - np.searchsorted(sorted_i, thresholds, side="right") / len(sorted_i)
    return far, tar


def _save(kind: str, far: np.ndarray, y: np.ndarray, ylabel: str, floor: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    (ax.semilogx if kind == "ROC" else ax.loglog)(far, y)
    ax.set(xlabel="false accept rate (FAR)", ylabel=ylabel, title=f"{kind}: {title}")
    ax.axvline(3 * floor, color="grey", linestyle=":", label=f"rule-of-three limit {3 * floor:.1e}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right" if kind == "ROC" else "upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_roc_det(genuine: np.ndarray, impostor: np.ndarray, folder: Path, title: str) -> tuple[Path, Path]:
    """roc.png (TAR against FAR) and det.png (FRR against FAR) in `folder`."""
    far, tar = curve(genuine, impostor)
    floor = 1.0 / len(impostor)  # below one false accept, FAR cannot be measured
    shown = far >= floor
    roc, det = Path(folder) / "roc.png", Path(folder) / "det.png"
    _save("ROC", far[shown], tar[shown], "true accept rate (TAR)", floor, title, roc)
    frr = np.clip(1.0 - tar, 1.0 / len(genuine), 1.0)
    _save("DET", far[shown], frr[shown], "false reject rate (FRR)", floor, title, det)
    return roc, det
