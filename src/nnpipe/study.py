"""The study grammar: run names, configuration and precision sets, every path of the results tree.

One place says how a study's files are named, so the Snakemake rules (``rules/common.smk``),
the tables (:mod:`nnpipe.report.tables`) and the CLI build the same paths. Every file of a
study lives under its dataset's folder, so two studies in one project folder (two datasets,
or one dataset in two ``results_dir``) never touch each other's outputs, logs or timings::

    <results_dir>/<dataset>/raw/dataset.json                      download (or link)
    <results_dir>/<dataset>/{stage}/<run>/fold<fold>/...          plan, train, predict, ...
    <results_dir>/<dataset>/tables.md, plots/*.png                what people read
    <results_dir>/<dataset>/logs/<stage>/...log                   each job's log
    <results_dir>/<dataset>/logs/<stage>/...tsv                   each job's Snakemake timing
    <results_dir>/tables.md                                       the configured study's tables

``<run>`` is :data:`RUN`, e.g. ``3d-fp32-1gpu``. The templates below keep Snakemake's
wildcards (``{dataset}``, ``{config}``, ...) for the rules; :func:`run_name`,
:func:`parse_run_name` and :class:`StudyPaths` fill them for code that names one file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nnpipe.config import PRECISIONS

# Configurations a run can have: 2d/3d, and the low-resolution cascade's two stages.
CONFIGURATIONS = ("2d", "3d", "3d_lowres", "3d_cascade")
__all__ = ["BENCH_NAME", "CONFIGURATIONS", "PRECISIONS", "RUN", "StudyPaths", "bench_name",
           "parse_run_name", "run_name"]

RUN = "{config}-{precision}-{gpus}gpu"
BENCH_NAME = "{mode}-{dim}d-{precision}-bs{bs}-{gpus}gpu"
_RUN_RE = re.compile(r"^(?P<config>{})-(?P<precision>{})-(?P<gpus>\d+)gpu$".format(
    "|".join(sorted(CONFIGURATIONS, key=len, reverse=True)), "|".join(PRECISIONS)))


def configuration(dim: int | str) -> str:
    """``"3d"`` for dim 3, a configuration's name (``"3d_cascade"``) unchanged."""
    return f"{dim}d" if isinstance(dim, int) else dim


def run_name(dim: int | str, precision: str, gpus: int) -> str:
    """``3d-fp32-1gpu`` for dim 3; ``3d_cascade-fp32-1gpu`` for a configuration's name."""
    return RUN.format(config=configuration(dim), precision=precision, gpus=gpus)


def parse_run_name(name: str) -> dict[str, str | int]:
    """``{"config": "3d", "precision": "fp32", "gpus": 1}`` of ``3d-fp32-1gpu``.

    Raises ``ValueError`` naming the run when it does not follow :data:`RUN`.
    """
    m = _RUN_RE.match(name)
    if m is None:
        raise ValueError(f"run name {name!r} is not <configuration>-<precision>-<gpus>gpu "
                         f"(configurations {', '.join(CONFIGURATIONS)}; precisions "
                         f"{', '.join(PRECISIONS)})")
    return {"config": m["config"], "precision": m["precision"], "gpus": int(m["gpus"])}


def bench_name(mode: str, dim: int, precision: str, batch_size: int, gpus: int) -> str:
    """``train-3d-fp32-bs2-1gpu``: one benchmark cell's name (:data:`BENCH_NAME`)."""
    return BENCH_NAME.format(mode=mode, dim=dim, precision=precision, bs=batch_size, gpus=gpus)


@dataclass(frozen=True)
class StudyPaths:
    """Every path of one study's results tree, as strings.

    ``dataset`` may be Snakemake's ``"{dataset}"`` wildcard: the rules then get templates.
    """

    results_dir: str
    dataset: str

    @property
    def root(self) -> str:
        """``<results_dir>/<dataset>``: the folder that holds everything of the study."""
        return f"{self.results_dir}/{self.dataset}"

    @property
    def tables(self) -> str:
        return f"{self.root}/tables.md"

    @property
    def latest_tables(self) -> str:
        """``<results_dir>/tables.md``: a copy of the configured study's tables (links
        rewritten), the target of ``make demo`` and the README's commands."""
        return f"{self.results_dir}/tables.md"

    @property
    def plots(self) -> str:
        return f"{self.root}/plots"

    @property
    def logs(self) -> str:
        return f"{self.root}/logs"

    def log(self, job: str) -> str:
        """The log of ``job`` (``train/3d-fp32-1gpu/fold0``, ``plans/fingerprint``)."""
        return f"{self.logs}/{job}.log"

    def timing(self, job: str) -> str:
        """Snakemake's ``benchmark:`` file (wall time, memory) of ``job``, beside its log."""
        return f"{self.logs}/{job}.tsv"

    @property
    def best(self) -> str:
        return f"{self.root}/best.json"

    def run_dir(self, stage: str, run: str) -> str:
        return f"{self.root}/{stage}/{run}"

    def eval_csv(self, dim: int | str, precision: str, gpus: int, fold: int | str) -> str:
        return f"{self.run_dir('evaluate', run_name(dim, precision, gpus))}/fold{fold}.csv"

    def train_json(self, dim: int | str, precision: str, gpus: int, fold: int | str) -> str:
        return f"{self.run_dir('train', run_name(dim, precision, gpus))}/fold{fold}/train.json"

    def bench_json(self, mode: str, dim: int, precision: str, batch_size: int,
                   gpus: int) -> str:
        return f"{self.root}/benchmark/{bench_name(mode, dim, precision, batch_size, gpus)}.json"

    def plot(self, name: str) -> str:
        """``<root>/plots/<name>.png``."""
        return f"{self.plots}/{name}.png"

    def relative(self, path: str) -> str:
        """``path`` relative to :attr:`root` (how tables.md links a plot)."""
        return str(Path(path).relative_to(self.root))
