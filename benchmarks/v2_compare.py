"""The pure half of the v2 parity bench: compare two tools' arrays, gate, print tables.

No nnU-Net and no files here; ``benchmarks/v2_parity.py`` runs the tools and hands the arrays
in. Conventions (pinned by ``benchmarks/tests/test_v2_compare.py``):

* **Dice per class** over every non-zero label value written by either tool (for a
  region-based dataset the values of ``regions_class_order``): ``2|A∩B| / (|A|+|B|)``, and
  1.0 where neither tool wrote the value (they agree it is absent).
* **voxel agreement**: the fraction of voxels with the same label value, over all cases'
  voxels together.
* **gate** (issue 19): every class Dice >= 0.999 and voxel agreement >= 0.9999.
* **first stage where they part**: the first of preprocessed -> probabilities -> labels
  whose difference passes its tolerance (preprocessed and probabilities: max |a - b|; labels:
  any voxel differs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

MIN_DICE = 0.999
MIN_VOXELS = 0.9999
# max |a - b| beyond which two arrays of a stage count as "parted": float32 noise of
# normalisation and cubic resampling stays far below 1e-3 on z-scored data. Probabilities get
# 5e-3: v2 accumulates the Gaussian-weighted logits in float16 even on the CPU
# (predict_sliding_window_return_logits: predicted_logits and n_predictions are torch.half),
# about 3 significant digits of a logit of magnitude ~10, i.e. ~1e-3 in a probability.
STAGE_TOL = {"preprocessed": 1e-3, "probabilities": 5e-3}
STAGES = ("preprocessed", "probabilities", "labels")


@dataclass
class LabelCounts:
    """Running counts of two label maps, case after case."""

    inter: dict[int, int] = field(default_factory=dict)
    size_a: dict[int, int] = field(default_factory=dict)
    size_b: dict[int, int] = field(default_factory=dict)
    same: int = 0
    total: int = 0

    def add(self, a: np.ndarray, b: np.ndarray, case: str = "") -> None:
        """Count one case: ``a`` and ``b`` integer label maps of one shape.

        Raises:
            ValueError: the shapes differ (naming ``case``).
        """
        if a.shape != b.shape:
            raise ValueError(f"case {case!r}: label maps of shapes {a.shape} and {b.shape}")
        self.same += int(np.count_nonzero(a == b))
        self.total += a.size
        for v in np.union1d(np.unique(a), np.unique(b)):
            v = int(v)
            if v == 0:
                continue
            ma, mb = a == v, b == v
            self.inter[v] = self.inter.get(v, 0) + int(np.count_nonzero(ma & mb))
            self.size_a[v] = self.size_a.get(v, 0) + int(np.count_nonzero(ma))
            self.size_b[v] = self.size_b.get(v, 0) + int(np.count_nonzero(mb))

    def dice(self, values: Iterable[int] = ()) -> dict[int, float]:
        """Dice per label value (``values`` plus every value seen), 1.0 where both are empty."""
        out = {}
        for v in sorted(set(values) | set(self.size_a) | set(self.size_b)):
            if v == 0:
                continue
            denom = self.size_a.get(v, 0) + self.size_b.get(v, 0)
            out[v] = 1.0 if denom == 0 else 2 * self.inter.get(v, 0) / denom
        return out

    @property
    def voxel_agreement(self) -> float:
        return 1.0 if self.total == 0 else self.same / self.total


def max_abs_diff(a: np.ndarray, b: np.ndarray, what: str = "") -> float:
    """``max |a - b|`` of two arrays of one shape (float64).

    Raises:
        ValueError: the shapes differ (naming ``what``).
    """
    if a.shape != b.shape:
        raise ValueError(f"{what}: arrays of shapes {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def passes_gate(dice: Mapping[int, float], voxels: float, min_dice: float = MIN_DICE,
                min_voxels: float = MIN_VOXELS) -> bool:
    """Issue 19's gate: every class Dice >= ``min_dice`` and voxel agreement >=
    ``min_voxels`` (fractions, not percent)."""
    return all(d >= min_dice for d in dice.values()) and voxels >= min_voxels


def first_parted(stage_diffs: Mapping[str, float | None], labels_identical: bool) -> str:
    """The first stage of :data:`STAGES` where the tools part, ``"none"`` if none does.

    ``stage_diffs``: max |a - b| of ``preprocessed`` and ``probabilities`` (None: not
    measured, skipped); ``labels_identical``: every voxel of every case the same.
    """
    for stage in STAGES[:-1]:
        d = stage_diffs.get(stage)
        if d is not None and (d > STAGE_TOL[stage] or np.isnan(d)):
            return stage
    return "none" if labels_identical else "labels"


def _fmt_diff(d: float | None) -> str:
    return "n/a" if d is None else f"{d:.1e}"


def parity_table(rows: Sequence[Mapping[str, object]]) -> str:
    """Markdown table of parity rows: dataset, configuration, network, folds, TTA, Dice per
    class, voxel agreement (%), max |diff| of preprocessed and probabilities, first stage
    where the tools part, gate."""
    head = ("| dataset | configuration | network | folds | TTA | cases | Dice per class | "
            "voxels identical | max abs diff: preprocessed | probabilities | parted at | "
            "gate |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        dice = r["dice"]
        assert isinstance(dice, Mapping)
        dice_txt = ", ".join(f"{k}: {v:.4f}" for k, v in dice.items()) or "-"
        lines.append(
            f"| {r['dataset']} | {r['configuration']} | {r['network']} | {r['folds']} | "
            f"{'on' if r['tta'] else 'off'} | {r['cases']} | {dice_txt} | "
            f"{100 * float(r['voxels']):.4f} % | "  # type: ignore[arg-type]
            f"{_fmt_diff(r.get('preprocessed'))} | "  # type: ignore[arg-type]
            f"{_fmt_diff(r.get('probabilities'))} | {r['parted']} | "  # type: ignore[arg-type]
            f"{'PASS' if r['gate'] else 'FAIL'} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Timing:
    """One timed run of a predict command: wall seconds, peak RSS of its process tree and
    the machine's mean 1-minute load average while it ran and the user + system CPU
    seconds of the process tree (NaN: not sampled)."""

    tool: str
    tta: bool
    wall_s: float
    peak_rss_bytes: int
    load: float = float("nan")
    cpu_s: float = float("nan")


def speed_rows(timings: Sequence[Timing]) -> list[dict[str, object]]:
    """Per TTA setting: median wall time and max peak RSS of each tool and the ratios
    ``nnunetv2 / nnpipe`` (speed-up, > 1: nnpipe faster) and ``nnpipe / nnunetv2`` (RSS).

    Raises:
        ValueError: a TTA setting timed for one tool only.
    """
    rows: list[dict[str, object]] = []
    for tta in sorted({t.tta for t in timings}, reverse=True):
        by = {tool: [t for t in timings if t.tta == tta and t.tool == tool]
              for tool in ("nnunetv2", "nnpipe")}
        if not by["nnunetv2"] or not by["nnpipe"]:
            raise ValueError(f"TTA {'on' if tta else 'off'}: both tools must be timed")
        wall = {k: float(np.median([t.wall_s for t in v])) for k, v in by.items()}
        rss = {k: max(t.peak_rss_bytes for t in v) for k, v in by.items()}
        rows.append({"tta": tta, "runs": len(by["nnpipe"]),
                     "v2_s": wall["nnunetv2"], "nnpipe_s": wall["nnpipe"],
                     "speedup": wall["nnunetv2"] / wall["nnpipe"],
                     "v2_rss_gib": rss["nnunetv2"] / 2**30,
                     "nnpipe_rss_gib": rss["nnpipe"] / 2**30,
                     "rss_ratio": rss["nnpipe"] / max(rss["nnunetv2"], 1),
                     "load": float(np.mean([t.load for v in by.values() for t in v])),
                     "v2_cpu_s": float(np.median([t.cpu_s for t in by["nnunetv2"]])),
                     "nnpipe_cpu_s": float(np.median([t.cpu_s for t in by["nnpipe"]]))})
    return rows


def speed_table(rows: Sequence[Mapping[str, object]]) -> str:
    """Markdown table of :func:`speed_rows`."""
    lines = ["| TTA | runs each | nnU-Net v2 s | nnpipe s | speed-up (v2 / nnpipe) | "
             "v2 peak RSS GiB | nnpipe peak RSS GiB | RSS nnpipe / v2 | load average | "
             "v2 CPU s | nnpipe CPU s | CPU v2 / nnpipe |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for r in rows:
        v2_cpu = float(r.get("v2_cpu_s", nan))  # type: ignore[arg-type]
        np_cpu = float(r.get("nnpipe_cpu_s", nan))  # type: ignore[arg-type]
        lines.append(f"| {'on' if r['tta'] else 'off'} | {r['runs']} | {r['v2_s']:.1f} | "
                     f"{r['nnpipe_s']:.1f} | {r['speedup']:.2f}x | {r['v2_rss_gib']:.2f} | "
                     f"{r['nnpipe_rss_gib']:.2f} | {r['rss_ratio']:.2f} | "
                     f"{float(r.get('load', nan)):.1f} | "  # type: ignore[arg-type]
                     f"{v2_cpu:.1f} | {np_cpu:.1f} | {v2_cpu / np_cpu:.2f}x |")
    return "\n".join(lines)
