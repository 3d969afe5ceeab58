"""Drift monitor: does a camera still see what the model was calibrated on?

Per door, rolling histograms of what the pipeline sees (face brightness, face size, blur,
detector confidence on every analysed face; liveness score, best score of unlocks and of
denials per decision; the motion gate's pass/no-pass per frame) against a reference: the
camera's own first observations (`drift.reference_samples` per statistic, spanning at least
`drift.reference_days`). Each statistic's change is the population stability index (PSI) of the
recent histogram against the reference one.

Small samples make PSI positive even when nothing changed: its expected value under no change is
about (bins - 1) x (1/n_reference + 1/n_recent). That noise is subtracted before the change is
compared with `drift.psi_act` (0.25, "act" in the usual reading: < 0.1 stable, 0.1-0.25 watch),
so a quiet door with few faces does not cry wolf.

The recent histogram decays exponentially (`drift.window` observations), which costs a few
multiplications per observation; the state is persisted owner-only under the data folder so
that `facelock drift` (another process) can read it and a restart keeps the reference.
Nothing here is on the decision path: the monitor only observes and reports.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..settings import DriftSettings
from ..storage.files import StorageError, write_private

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FILE_PATTERN = "drift-{door}.json"
EPSILON = 1e-4  # proportion floor of an empty bin (PSI takes the log of the ratio)
SAVE_EVERY_S = 60.0
REFERENCE_FILE = Path(__file__).resolve().parent.parent / "models" / "drift_reference.json"
INF = float("inf")


@dataclass(frozen=True)
class Statistic:
    label: str
    edges: tuple[float, ...]  # bin edges, increasing; the last bin is open-ended
    advice: str  # what the owner can do when it drifts


STATISTICS: dict[str, Statistic] = {
    "brightness": Statistic(
        "face brightness", (0, 40, 60, 80, 100, 120, 140, 160, 180, 200, INF),
        "check the lighting at the door and the camera's exposure or IR mode",
    ),
    "face_size": Statistic(
        "face size", (0, 40, 60, 80, 100, 130, 170, 220, 300, 400, INF),
        "the camera may have moved or been re-aimed",
    ),
    "blur": Statistic(
        "face sharpness", (0, 20, 40, 70, 100, 150, 250, 400, 700, 1200, INF),
        "clean or refocus the lens (rain, dirt, condensation)",
    ),
    "detector_score": Statistic(
        "detector confidence", (0, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.96, 0.98, INF),
        "faces are harder to find: check the lighting and the lens",
    ),
    "liveness": Statistic(
        "liveness score", (0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, INF),
        "liveness judges faces differently: check the lighting; attacks also move it",
    ),
    "unlock_score": Statistic(
        "best score of unlocks", (-INF, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, INF),
        "enrolled people match less well: run `facelock recalibrate`, re-enroll if it persists",
    ),
    "denial_score": Statistic(
        "best score of denials", (-INF, 0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, INF),
        "refused faces come closer to enrolled ones: run `facelock recalibrate`",
    ),
    "gate_pass": Statistic(
        "motion gate pass rate", (0, 0.5, INF),
        "the motion gate opens more or less often than it did: sensor noise, rain or a moved camera",
    ),
}

# Error analysis by condition: each decision is counted under its attempt's median face brightness and size.
BRIGHTNESS_BANDS = ((0, 60, "dark (< 60)"), (60, 120, "dim (60-120)"), (120, 190, "normal (120-190)"), (190, INF, "bright (>= 190)"))
SIZE_BANDS = ((0, 80, "small (< 80 px)"), (80, 150, "medium (80-150 px)"), (150, INF, "large (>= 150 px)"))


def _bin(stat: Statistic, value: float) -> int:
    edges = stat.edges
    index = int(np.searchsorted(edges, value, side="right")) - 1
    return min(max(index, 0), len(edges) - 2)


def psi(reference: np.ndarray, recent: np.ndarray) -> float:
    """Population stability index of two histograms (counts or weights)."""
    p = np.maximum(reference / max(reference.sum(), 1e-12), EPSILON)
    q = np.maximum(recent / max(recent.sum(), 1e-12), EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


class Tracker:
    """One statistic of one door: the reference histogram and the decaying recent one."""

    def __init__(self, stat: Statistic) -> None:
        bins = len(stat.edges) - 1
        self.stat = stat
        self.reference = np.zeros(bins)
        self.reference_sum = 0.0
        self.recent = np.zeros(bins)
        self.recent_sum = 0.0  # decayed sum of values, for the recent mean
        self.recent_sq = 0.0  # decayed sum of squared weights, for the effective sample size
        self.first_seen: float | None = None
        self.frozen = False  # the reference is complete and no longer changes

    def add(self, value: float, now: float, settings: DriftSettings) -> None:
        index = _bin(self.stat, value)
        decay = 1.0 - 1.0 / settings.window
        self.recent *= decay
        self.recent[index] += 1.0
        self.recent_sum = self.recent_sum * decay + value
        self.recent_sq = self.recent_sq * decay * decay + 1.0
        if self.frozen:
            return
        self.first_seen = now if self.first_seen is None else self.first_seen
        self.reference[index] += 1
        self.reference_sum += value
        old_enough = now - self.first_seen >= settings.reference_days * 86400.0
        self.frozen = bool(self.reference.sum() >= settings.reference_samples and old_enough)

    @property
    def recent_n(self) -> float:
        """Effective sample size of the decayed window: (sum of weights)^2 / sum of squared weights."""
        total = self.recent.sum()
        return total * total / self.recent_sq if self.recent_sq else 0.0

    def judge(self, settings: DriftSettings, shipped: tuple[np.ndarray, float] | None = None) -> dict:
        """The recent window against the camera's reference once complete; before that against
        `shipped` (counts, sum of values: the model card's data) when there is one."""
        if self.frozen:
            reference, reference_sum, source = self.reference, self.reference_sum, "camera"
        elif shipped is not None:
            (reference, reference_sum), source = shipped, "model card"
        else:
            reference, reference_sum, source = self.reference, self.reference_sum, None
        n_ref, n_recent = float(reference.sum()), self.recent_n
        verdict = {
            "psi": None, "drifted": False, "level": "learning", "noise": None, "reference": source,
            "reference_samples": int(n_ref), "recent_samples": round(float(n_recent), 1),
            "reference_mean": round(float(reference_sum / n_ref), 4) if n_ref else None,
            "recent_mean": round(float(self.recent_sum / self.recent.sum()), 4) if self.recent.sum() else None,
        }  # fmt: skip
        if source is None or n_recent < settings.min_samples:
            return verdict  # no reference yet, or too few recent observations to say anything
        value = psi(reference, self.recent)
        noise = float((len(reference) - 1) * (1.0 / n_ref + 1.0 / n_recent))
        excess = value - noise
        level = "act" if excess > settings.psi_act else "watch" if excess > settings.psi_watch else "stable"
        verdict.update(psi=round(value, 4), noise=round(noise, 4), level=level, drifted=bool(level == "act"))
        return verdict

    def to_json(self) -> dict:
        return {
            "reference": self.reference.tolist(), "reference_sum": self.reference_sum,
            "recent": self.recent.tolist(), "recent_sum": self.recent_sum, "recent_sq": self.recent_sq,
            "first_seen": self.first_seen, "frozen": self.frozen,
        }  # fmt: skip

    def load(self, data: dict) -> None:
        bins = len(self.reference)
        reference, recent = np.asarray(data["reference"], float), np.asarray(data["recent"], float)
        if reference.shape != (bins,) or recent.shape != (bins,):
            raise ValueError(f"{self.stat.label}: {bins} bins expected")
        self.reference, self.recent = reference, recent
        self.reference_sum, self.recent_sum = float(data["reference_sum"]), float(data["recent_sum"])
        self.recent_sq, self.frozen = float(data["recent_sq"]), bool(data["frozen"])
        self.first_seen = None if data["first_seen"] is None else float(data["first_seen"])


def shipped_reference() -> dict[str, tuple[np.ndarray, float]]:
    """The model card's data (REFERENCE_FILE, NUAA live webcam faces through this pipeline) per
    statistic as (counts, sum of values); {} when the file is missing or does not fit the bins."""
    try:
        data = json.loads(REFERENCE_FILE.read_text())["statistics"]
        shipped = {key: (np.asarray(v["counts"], float), float(v["sum"])) for key, v in data.items() if key in STATISTICS}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("drift: no model-card reference (%s)", exc)
        return {}
    return {key: v for key, v in shipped.items() if v[0].shape == (len(STATISTICS[key].edges) - 1,)}


def reference_from_faces(results: list, source: str) -> dict:
    """REFERENCE_FILE's content from `FaceResult`s (`facelock drift --write-reference`)."""
    monitor = DriftMonitor("reference", DriftSettings(reference_samples=10**5, reference_days=0.0), shipped=False)
    for result in results:
        monitor.observe_face(result)
    statistics = {key: {"counts": t.reference.tolist(), "sum": t.reference_sum}
                  for key, t in monitor.trackers.items() if t.reference.sum()}  # fmt: skip
    return {"source": source, "faces": len(results), "statistics": statistics}


def _band(bands: tuple, value: float) -> str:
    return next(label for low, high, label in bands if low <= value < high)


class DriftMonitor:
    """One door's drift statistics. Fed by the door thread; read and saved by the same thread."""

    def __init__(self, door: str, settings: DriftSettings, path: Path | None = None, shipped: bool = True) -> None:
        self.door = door
        self.shipped = shipped_reference() if shipped else {}
        self.settings = settings
        self.path = path
        self.trackers = {key: Tracker(stat) for key, stat in STATISTICS.items()}
        self.conditions: dict[str, dict[str, dict[str, int]]] = {"brightness": {}, "face_size": {}}
        self._attempt: list[tuple[float, float]] = []  # (brightness, size) of faces since the last decision
        self._saved = time.monotonic()
        if path is not None and path.is_file():
            self._load(path)

    @classmethod
    def for_door(cls, door: str, settings: DriftSettings, data_dir: Path) -> DriftMonitor:
        return cls(door, settings, Path(data_dir) / FILE_PATTERN.format(door=door))

    # --- what the door tells it ---

    def observe_gate(self, passed: bool) -> None:
        self._add("gate_pass", 1.0 if passed else 0.0)

    def observe_face(self, result) -> None:
        """A `FaceResult` (pipeline/engine.py) of an analysed frame, usable or not."""
        quality = result.quality
        self._add("brightness", quality.brightness)
        self._add("face_size", quality.size_px)
        self._add("blur", quality.blur)
        self._add("detector_score", float(result.face.score))
        self._attempt.append((quality.brightness, quality.size_px))

    def observe_decision(self, event: dict) -> None:
        """A decision event as the door publishes it (event_type, score, liveness)."""
        outcome, score = event["event_type"], event.get("score")
        if event.get("liveness") is not None:
            self._add("liveness", float(event["liveness"]))
        if score is not None:
            self._add("unlock_score" if outcome == "recognized" else "denial_score", float(score))
        if self._attempt:
            brightness, size = np.median(np.asarray(self._attempt), axis=0)
            for key, band in (("brightness", _band(BRIGHTNESS_BANDS, brightness)), ("face_size", _band(SIZE_BANDS, size))):
                counts = self.conditions[key].setdefault(band, {})
                counts[outcome] = counts.get(outcome, 0) + 1
        self._attempt = []

    def _add(self, key: str, value: float) -> None:
        if self.settings.enabled and math.isfinite(value):
            self.trackers[key].add(value, time.time(), self.settings)

    # --- what it reports ---

    def report(self) -> dict[str, dict]:
        """{statistic: {"psi": float | None, "drifted": bool, "level", ...}} (None: still learning)."""
        return {key: {"label": t.stat.label, **t.judge(self.settings, self.shipped.get(key))} for key, t in self.trackers.items()}

    def score(self, report: dict[str, dict] | None = None) -> float | None:
        """The door's drift score: the largest PSI above its noise, None while nothing is judged."""
        report = report or self.report()
        excess = [max(0.0, v["psi"] - v["noise"]) for v in report.values() if v["psi"] is not None]
        return max(excess) if excess else None

    def problems(self, report: dict[str, dict] | None = None) -> list[str]:
        """One reason per statistic drifted from the camera's own reference, for the door's
        `problem` sensor. A camera unlike the model card's data is reported by `facelock drift`
        (and the drift score) but raises no problem: most cameras differ from it somewhat."""
        report = report or self.report()
        return [
            f"drift: {v['label']} changed from this camera's reference (PSI {v['psi']:.2f}, mean "
            f"{v['reference_mean']:.3g} -> {v['recent_mean']:.3g}); {STATISTICS[key].advice}"
            for key, v in report.items()
            if v["drifted"] and v["reference"] == "camera"
        ]

    # --- persistence ---

    def maybe_save(self) -> None:
        if time.monotonic() - self._saved >= SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        """Write the state owner-only; a failure is logged, never raised (the door keeps working)."""
        self._saved = time.monotonic()
        if self.path is None:
            return
        state = {
            "format_version": FORMAT_VERSION, "door": self.door, "saved": time.time(),
            "statistics": {key: t.to_json() for key, t in self.trackers.items()}, "conditions": self.conditions,
        }  # fmt: skip
        try:
            write_private(self.path, json.dumps(state).encode())
        except StorageError as exc:
            log.warning("door %s: drift state not saved: %s", self.door, exc)

    def _load(self, path: Path) -> None:
        try:
            state = json.loads(path.read_text())
            if state.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {state.get('format_version')!r}")
            for key, data in state["statistics"].items():
                if key in self.trackers:
                    self.trackers[key].load(data)
            self.conditions.update(state.get("conditions", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged file restarts learning, loudly
            log.warning("door %s: drift state %s unreadable (%s); learning a new reference", self.door, path, exc)
            self.trackers = {key: Tracker(stat) for key, stat in STATISTICS.items()}


def saved_monitors(data_dir: Path, settings: DriftSettings) -> dict[str, DriftMonitor]:
    """Every door's saved monitor under `data_dir` (what `facelock drift` reads)."""
    monitors = {}
    prefix, suffix = FILE_PATTERN.split("{door}")
    for path in sorted(Path(data_dir).glob(FILE_PATTERN.format(door="*"))):
        door = path.name[len(prefix) : -len(suffix)]
        monitors[door] = DriftMonitor(door, settings, path)
    return monitors


def error_analysis(conditions: dict[str, dict[str, dict[str, int]]]) -> dict[str, dict[str, dict]]:
    """Decisions by condition band: counts per outcome and the share recognised."""
    analysis: dict[str, dict[str, dict]] = defaultdict(dict)
    for key, bands in conditions.items():
        for band, counts in bands.items():
            total = sum(counts.values())
            analysis[key][band] = {**counts, "total": total, "recognized_share": round(counts.get("recognized", 0) / total, 4)}
    return dict(analysis)


def format_report(reports: dict[str, dict[str, dict]]) -> str:
    """`facelock drift` as text: one line per statistic of each door."""
    lines = []
    for door, report in reports.items():
        lines.append(f"{door}:")
        for key, v in report.items():
            if v["psi"] is None:
                state = f"learning ({v['reference_samples']} reference, {v['recent_samples']:.0f} recent observations)"
            else:
                state = f"PSI {v['psi']:.3f} (noise {v['noise']:.3f}) {v['level'].upper()} vs the {v['reference']}"
            means = "" if v["recent_mean"] is None else f"  mean {v['reference_mean']} -> {v['recent_mean']}"
            lines.append(f"  {key:<15} {state}{means}")
    return "\n".join(lines) if lines else "no drift state yet: the service writes it while it watches a camera"


def format_conditions(analyses: dict[str, dict[str, dict[str, dict]]]) -> str:
    """`facelock drift --by-condition` as text: decisions per brightness and face-size band."""
    lines = []
    for door, analysis in analyses.items():
        lines.append(f"{door}:")
        for key, bands in analysis.items():
            for band, row in bands.items():
                outcomes = ", ".join(f"{k} {v}" for k, v in row.items() if k not in ("total", "recognized_share"))
                lines.append(f"  {key:<10} {band:<20} {row['total']:>5} decisions, {100 * row['recognized_share']:.1f} % recognised ({outcomes})")
    return "\n".join(lines) if lines else "no decisions recorded yet"


# --- template aging: a person whose genuine scores fall steadily --------------------------------

AGING_MIN_UNLOCKS = 10  # fewer unlocks say nothing about a trend
AGING_MIN_DROP = 0.05  # cosine the fitted line falls over the unlocks considered
AGING_T = -3.0  # the fall must be steady: the slope's t statistic at or below this


@dataclass(frozen=True)
class Aging:
    person: str
    unlocks: int
    drop: float  # fitted score at the first unlock minus at the last; > 0 is a fall
    t: float  # t statistic of the fitted slope (negative: falling)
    first: float  # fitted score at the first and the last unlock
    last: float

    @property
    def flagged(self) -> bool:
        return self.unlocks >= AGING_MIN_UNLOCKS and self.drop >= AGING_MIN_DROP and self.t <= AGING_T

    def as_dict(self) -> dict:
        return {**{k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}, "flagged": self.flagged}


def score_trend(person: str, history: list[tuple[float, float]]) -> Aging:
    """Least-squares line through (time, best score) of a person's unlocks, oldest first.

    Judged by its fall over the span and by its t statistic, not by its slope per day, so that
    a door used every day and one used weekly are held to the same standard."""
    times = np.asarray([t for t, _ in history], float)
    scores = np.asarray([s for _, s in history], float)
    n = len(scores)
    if n < 3 or np.ptp(times) <= 0:
        return Aging(person, n, 0.0, 0.0, float(scores.mean()) if n else 0.0, float(scores.mean()) if n else 0.0)
    x = times - times.mean()
    slope = float(x @ (scores - scores.mean()) / (x @ x))
    fitted = scores.mean() + slope * x
    residual = float(np.sum((scores - fitted) ** 2)) / (n - 2)
    se = math.sqrt(residual / float(x @ x)) if residual > 0 else 0.0
    t = slope / se if se > 0 else (-math.inf if slope < 0 else math.inf if slope > 0 else 0.0)
    first, last = float(fitted[0]), float(fitted[-1])
    return Aging(person, n, first - last, max(min(t, 1e6), -1e6), first, last)
