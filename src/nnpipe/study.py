"""The study grammar: run names, configuration and precision sets, every path of the results tree.

One place says how a study's files are named, so the Snakemake rules (``rules/*.smk``), the
tables (:mod:`nnpipe.report.tables`), the best configuration (:mod:`nnpipe.evaluation.best`),
model resolution (:mod:`nnpipe.inference.model_spec`) and the CLI build, and read back, the
same paths. Every file of a study lives under its dataset's folder, so two studies in one
project folder (two datasets, or one dataset in two ``results_dir``) never touch each other's
outputs, logs or timings::

    <results_dir>/<dataset>/raw/dataset.json                      download (or link)
    <results_dir>/<dataset>/{stage}/<run>/fold<fold>/...          plan, train, predict, ...
    <results_dir>/<dataset>/tables.md, plots/*.png                what people read
    <results_dir>/<dataset>/logs/<stage>/...log                   each job's log
    <results_dir>/<dataset>/logs/<stage>/...tsv                   each job's Snakemake timing
    <results_dir>/tables.md                                       the configured study's tables

``<run>`` is :data:`RUN`, e.g. ``3d-fp32-1gpu``. :data:`FILES` names every file of the tree
by kind, as a template relative to the dataset's folder with Snakemake's wildcards
(``{config}``, ``{fold}``, ...): :meth:`StudyPaths.template` gives the rules their outputs,
:meth:`StudyPaths.path` fills one file for code, and :func:`parse_path` reads a path back
into its kind and fields (the tables read their rule's inputs that way).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nnpipe.config import PRECISIONS

# Configurations a run can have, with the dimensionality of their network: 2d/3d, and the
# low-resolution cascade's two stages (nnU-Net's 3d_lowres and 3d_cascade_fullres).
CONFIGURATION_DIMS: Mapping[str, int] = {"2d": 2, "3d": 3, "3d_lowres": 3, "3d_cascade": 3}
CONFIGURATIONS = tuple(CONFIGURATION_DIMS)
LOWRES, CASCADE = "3d_lowres", "3d_cascade"
CASCADE_STAGES = (LOWRES, CASCADE)
# the stage whose segmentations a cascade configuration takes as input
PREVIOUS_STAGE: Mapping[str, str] = {CASCADE: LOWRES}
MODES = ("train", "predict")  # benchmark cells

__all__ = ["BENCH_NAME", "CASCADE_STAGES", "CHECKPOINT_NAMES", "CONFIGURATIONS", "FOLD",
           "CONFIGURATION_DIMS", "DOWNLOAD_CACHE", "FILES", "LAST_CHECKPOINT", "METRICS_FILE",
           "MODEL_FILE", "TRAIN_SUMMARY",
           "PRECISIONS", "RUN", "WILDCARDS", "StudyFile", "StudyPaths", "bench_name",
           "configuration_dim", "parse_path", "parse_run_name", "previous_run", "run_name"]

RUN = "{config}-{precision}-{gpus}gpu"
FOLD = "fold{fold}"  # a fold's folder (or file stem) in a run's folder
BENCH_NAME = "{mode}-{dim}d-{precision}-bs{bs}-{gpus}gpu"
# A fold folder's files: the trained model, the checkpoint of a run in progress (resumed from,
# and read when no final model exists yet), the run's summary and its per-epoch metrics.
MODEL_FILE, LAST_CHECKPOINT = "final.pt", "last.pt"
CHECKPOINT_NAMES = (MODEL_FILE, LAST_CHECKPOINT)  # a fold's model, in order of preference
TRAIN_SUMMARY, METRICS_FILE = "train.json", "metrics.csv"
# beside raw/: the downloaded archives (MSD tarballs), kept so a rerun does not fetch again
DOWNLOAD_CACHE = "download"


def _alternatives(names: tuple[str, ...]) -> str:
    """``3d_cascade|3d_lowres|...``: longest first, so a regex never stops at a prefix."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


# What each wildcard of the grammar may hold: Snakemake's wildcard_constraints
# (rules/common.smk) and the patterns of parse_path.
WILDCARDS: Mapping[str, str] = {
    "dataset": r"[^/]+",
    "config": _alternatives(CONFIGURATIONS),
    "precision": _alternatives(PRECISIONS),
    "gpus": r"\d+",
    "fold": r"\d+",
    "dim": "2|3",
    "bs": r"\d+",
    "mode": _alternatives(MODES),
    "name": r"[^/]+",  # a prediction set (config `predict:`)
    "ensemble": r"[^/]+\+[^/]+",  # a 2D + 3D candidate of the best configuration: RUN+RUN
    "part": r"\d+",
    "parts": r"\d+",
    "job": r".+",  # a log's job: the output it logs, relative to the dataset folder
}
_INT_FIELDS = frozenset({"gpus", "fold", "dim", "bs", "part", "parts"})

# Every file of a study's tree by kind, relative to <results_dir>/<dataset>.
FILES: Mapping[str, str] = {
    "dataset_json": "raw/dataset.json",
    "fingerprint": "plans/fingerprint.json",
    "plan": "plans/{config}.json",
    "splits": "splits.json",
    "manifest": "preprocessed/{config}/manifest.json",
    "run_folder": f"train/{RUN}",
    "fold_folder": f"train/{RUN}/{FOLD}",
    "model": f"train/{RUN}/{FOLD}/{MODEL_FILE}",
    "train_json": f"train/{RUN}/{FOLD}/{TRAIN_SUMMARY}",
    "metrics": f"train/{RUN}/{FOLD}/{METRICS_FILE}",
    "predictions": f"predict/{RUN}/{FOLD}",
    "scores": f"evaluate/{RUN}/{FOLD}.csv",
    "summary": f"evaluate/{RUN}/{FOLD}.json",
    "decision": f"postprocess/{RUN}.json",
    "ensemble": f"ensemble/{RUN}",
    "previous": f"previous/{RUN}",
    "benchmark": f"benchmark/{BENCH_NAME}.json",
    "best": "best.json",
    "crossval": "crossval",
    "crossval_predictions": f"crossval/{{ensemble}}/{FOLD}",
    "crossval_decision": "crossval/{ensemble}/postprocess.json",
    "prediction_set": "predictions/{name}",
    "prediction_part": "predictions/{name}.parts/part{part}-of-{parts}.json",
    "tables": "tables.md",
    "dice_plot": "plots/dice-per-class.png",
    "curves_plot": f"plots/curves-{RUN}.png",
    "overlays_plot": f"plots/overlays-{RUN}.png",
    "throughput_plot": "plots/throughput.png",
    "log": "logs/{job}.log",
    "timing": "logs/{job}.tsv",
}
# kinds inside a rule's output folder (the rules declare the folder): run and fold folders
# of train/, the ensembles' cross-validation predictions inside crossval/
INNER_FILES = frozenset({"run_folder", "fold_folder", "crossval_predictions",
                         "crossval_decision"})
_WILDCARD = re.compile(r"\{(\w+)\}")


def template_fields(template: str) -> list[str]:
    """The wildcards of ``template`` in order (``["config", "precision", "gpus", "fold"]``)."""
    return _WILDCARD.findall(template)


def _pattern(template: str) -> str:
    """``template`` as a regex with one named group per wildcard (a repeated one matches the
    same text again)."""
    out, seen, pos = [], set(), 0
    for m in _WILDCARD.finditer(template):
        out.append(re.escape(template[pos:m.start()]))
        name = m[1]
        out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{WILDCARDS[name]})")
        seen.add(name)
        pos = m.end()
    return "".join(out) + re.escape(template[pos:])


_FILE_RES = {kind: re.compile(rf"^(?P<_root>.+?/)??(?P<dataset>{WILDCARDS['dataset']})/"
                              rf"{_pattern(t)}$")
             for kind, t in FILES.items()}
_RUN_RE = re.compile(f"^{_pattern(RUN)}$")
_FOLD_RE = re.compile(_pattern(FOLD))


def configuration(dim: int | str) -> str:
    """``"3d"`` for dim 3, a configuration's name (``"3d_cascade"``) unchanged."""
    return f"{dim}d" if isinstance(dim, int) else dim


def configuration_dim(config: str) -> int:
    """2 or 3: the dimensionality of a configuration's network (``3d_cascade`` -> 3).

    Raises ``ValueError`` naming the configuration and the known ones.
    """
    if config not in CONFIGURATION_DIMS:
        raise ValueError(f"unknown configuration {config!r}; known: {', '.join(CONFIGURATIONS)}")
    return CONFIGURATION_DIMS[config]


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


def previous_run(run: str) -> str | None:
    """``3d_lowres-fp32-1gpu`` for ``3d_cascade-fp32-1gpu`` (a cascade stage and its previous
    stage share precision and GPUs); None for a run of one stage."""
    fields = parse_run_name(run)
    stage = PREVIOUS_STAGE.get(str(fields["config"]))
    return None if stage is None else run_name(stage, str(fields["precision"]),
                                               int(fields["gpus"]))


def fold_number(name: str) -> int | None:
    """3 for a fold folder's name ``fold3`` (:data:`FOLD`); None for any other name."""
    m = _FOLD_RE.fullmatch(name)
    return None if m is None else int(m["fold"])


def study_file(path: str | Path) -> StudyFile | None:
    """:func:`parse_path` of ``path`` made absolute (so ``train/RUN`` given inside a study
    folder reads too); None for a path outside any study's results tree."""
    try:
        return parse_path(Path(path).absolute())
    except ValueError:
        return None


def bench_name(mode: str, dim: int, precision: str, batch_size: int, gpus: int) -> str:
    """``train-3d-fp32-bs2-1gpu``: one benchmark cell's name (:data:`BENCH_NAME`)."""
    return BENCH_NAME.format(mode=mode, dim=dim, precision=precision, bs=batch_size, gpus=gpus)


@dataclass(frozen=True)
class StudyFile:
    """A path of a results tree read back (:func:`parse_path`): which study, which kind of
    file (a key of :data:`FILES`), and its wildcards' values (ints for gpus, fold, ...)."""

    results_dir: str
    dataset: str
    kind: str
    fields: Mapping[str, str | int]

    @property
    def run(self) -> str:
        """The run name of a per-run file (``3d-fp32-1gpu``).

        Raises ``ValueError`` for a file of no run (``splits.json``, a plan).
        """
        if not {"config", "precision", "gpus"} <= set(self.fields) or "mode" in self.fields:
            raise ValueError(f"a {self.kind} file belongs to no run")
        return run_name(str(self.fields["config"]), str(self.fields["precision"]),
                        int(self.fields["gpus"]))

    @property
    def path(self) -> str:
        """The path again: ``parse_path(p).path == p`` for a normalised ``p``."""
        return StudyPaths(self.results_dir, self.dataset).path(self.kind, **self.fields)


def parse_path(path: str | Path) -> StudyFile:
    """The study, kind and fields of a path of the results tree (the inverse of
    :meth:`StudyPaths.path`); ``results/d/train/3d-fp32-1gpu/fold0/final.pt`` ->
    ``StudyFile("results", "d", "model", {"config": "3d", "precision": "fp32", "gpus": 1,
    "fold": 0})``. ``<results_dir>/tables.md`` (the configured study's copy) reads as the
    ``tables`` of a study named after the folder it is in; a folder may end in ``/``.

    Raises ``ValueError`` naming the path when no kind of :data:`FILES` matches.
    """
    text = str(path).rstrip("/")
    for kind, pattern in _FILE_RES.items():
        m = pattern.match(text)
        if m is None:
            continue
        root = "." if m["_root"] is None else m["_root"].rstrip("/") or "/"
        fields = {k: int(v) if k in _INT_FIELDS else v for k, v in m.groupdict().items()
                  if k not in ("_root", "dataset")}
        return StudyFile(root, m["dataset"], kind, fields)
    raise ValueError(f"{text!r} is no file of a study's results tree "
                     f"(<results_dir>/<dataset>/... as nnpipe.study.FILES names them)")


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
        return f"{self.results_dir.rstrip('/')}/{self.dataset}"

    def template(self, kind: str) -> str:
        """The file ``kind`` (a key of :data:`FILES`) under :attr:`root`, its wildcards
        unfilled: ``results/{dataset}/train/{config}-{precision}-{gpus}gpu/fold{fold}/final.pt``.

        Raises ``ValueError`` naming an unknown kind.
        """
        if kind not in FILES:
            raise ValueError(f"no file kind {kind!r} in the study grammar; known: "
                             f"{', '.join(FILES)}")
        return f"{self.root}/{FILES[kind]}"

    def path(self, kind: str, **fields: str | int) -> str:
        """The file ``kind`` with every wildcard filled from ``fields`` (a ``dim`` works for
        ``config``: 3 -> ``3d``).

        Raises ``ValueError`` naming a missing or unknown field.
        """
        template = self.template(kind)
        wanted = template_fields(FILES[kind])
        if "config" in fields:
            fields = {**fields, "config": configuration(fields["config"])}
        missing = [f for f in wanted if f not in fields]
        extra = [f for f in fields if f not in wanted]
        if missing or extra:
            raise ValueError(f"the {kind} path ({FILES[kind]}) needs the fields "
                             f"{', '.join(dict.fromkeys(wanted)) or 'none'}; got "
                             f"{', '.join(fields) or 'none'}")
        return _WILDCARD.sub(lambda m: str(fields[m[1]]) if m[1] in wanted else m[0], template)

    def run_file(self, kind: str, run: str, **fields: str | int) -> str:
        """The per-run file ``kind`` of the run named ``run`` (``3d-fp32-1gpu``)."""
        return self.path(kind, **parse_run_name(run), **fields)

    @property
    def tables(self) -> str:
        return self.path("tables")

    @property
    def latest_tables(self) -> str:
        """``<results_dir>/tables.md``: a copy of the configured study's tables (links
        rewritten), the target of ``make demo`` and the README's commands."""
        return f"{self.results_dir}/tables.md"

    @property
    def raw(self) -> str:
        """The raw dataset folder (holding ``dataset.json``)."""
        return f"{self.root}/raw"

    @property
    def plots(self) -> str:
        return f"{self.root}/plots"

    @property
    def logs(self) -> str:
        return f"{self.root}/logs"

    def log(self, job: str) -> str:
        """The log of ``job`` (``train/3d-fp32-1gpu/fold0``, ``plans/fingerprint``)."""
        return self.path("log", job=job)

    def timing(self, job: str) -> str:
        """Snakemake's ``benchmark:`` file (wall time, memory) of ``job``, beside its log."""
        return self.path("timing", job=job)

    @property
    def best(self) -> str:
        return self.path("best")

    @property
    def splits(self) -> str:
        return self.path("splits")

    def run_dir(self, stage: str, run: str) -> str:
        return f"{self.root}/{stage}/{run}"

    def eval_csv(self, dim: int | str, precision: str, gpus: int, fold: int | str) -> str:
        return self.path("scores", config=dim, precision=precision, gpus=gpus, fold=fold)

    def train_json(self, dim: int | str, precision: str, gpus: int, fold: int | str) -> str:
        return self.path("train_json", config=dim, precision=precision, gpus=gpus, fold=fold)

    def bench_json(self, mode: str, dim: int, precision: str, batch_size: int,
                   gpus: int) -> str:
        return self.path("benchmark", mode=mode, dim=dim, precision=precision, bs=batch_size,
                         gpus=gpus)

    def plot(self, name: str) -> str:
        """``<root>/plots/<name>.png``."""
        return f"{self.plots}/{name}.png"

    def relative(self, path: str) -> str:
        """``path`` relative to :attr:`root` (how tables.md links a plot)."""
        return str(Path(path).relative_to(self.root))
