# Wiring only: config validation, the experiment grid, wildcard constraints, input functions.

import functools
import json
import os

from snakemake.utils import validate

from nnpipe.config import study_config
from nnpipe.training.launch import launcher, nodes_for


validate(config, "../config/schema.yaml", set_default=True)
STUDY = study_config(config)
GRID = STUDY.grid
BENCH = STUDY.benchmark
DATASET = STUDY.dataset.name
RESULTS = STUDY.results_dir
DS = f"{RESULTS}/{{dataset}}"
RUN = "{dim}d-{precision}-{gpus}gpu"
TABLES = f"{RESULTS}/tables.md"


wildcard_constraints:
    dataset=DATASET,
    dim="2|3",
    precision="fp32|tf32|amp|bf16",
    gpus=r"\d+",
    fold=r"\d",
    bs=r"\d+",
    mode="train|predict",


def section_json(*names):
    """The named config sections as JSON for `nnpipe --config-json`: a rule reruns only when
    a section it reads changes (Snakemake's params trigger)."""
    return json.dumps({name: config[name] for name in names}, sort_keys=True)


# ---- dims the dataset allows: the fingerprint (a checkpoint) decides


@functools.cache
def _single_slice(path, mtime_ns):
    """Fingerprint.single_slice of the fingerprint JSON at `path`, read once per version of
    the file (mtime_ns) although the input functions below run once per job."""
    from nnpipe.planning.fingerprint import Fingerprint

    with open(path) as f:
        return Fingerprint.from_dict(json.load(f)).single_slice


def left_out_dims():
    """Dims of grid.dims the dataset cannot have, each with why: {3: ...} when every case is a
    single slice (a 2D dataset; the fingerprint job logs it). Waits for the fingerprint
    checkpoint, so only input functions (and params of a rule whose input does) call it."""
    path = checkpoints.fingerprint.get(dataset=DATASET).output.fingerprint
    if 3 not in GRID.dims or not _single_slice(path, os.stat(path).st_mtime_ns):
        return {}
    return {3: f"every case of `{DATASET}` is a single slice (a 2D dataset)"}


def planned_dims():
    """GRID.dims less left_out_dims(): the dims whose runs are in the study's DAG."""
    left_out = left_out_dims()
    dims = [d for d in GRID.dims if d not in left_out]
    if not dims:
        raise ValueError(f"grid.dims is {list(GRID.dims)} but "
                         + "; ".join(left_out.values()) + ": add 2 to grid.dims")
    return dims


def get_left_out(wildcards):
    """left_out_dims() for the tables (a params function: the tables' input waits for the
    fingerprint)."""
    return left_out_dims()


def run_keys():
    """(dim, precision, gpus, fold) of every training run the study makes (planned_dims)."""
    return [
        dict(dim=d, precision=p, gpus=g, fold=f)
        for d in planned_dims()
        for p in GRID.precisions
        for g in GRID.gpus
        for f in GRID.folds
    ]


def benchmark_keys():
    """(mode, dim, precision, bs, gpus) of every benchmark cell the study makes."""
    keys = []
    for d in planned_dims():
        for p in BENCH.precisions:
            keys += [dict(mode="train", dim=d, precision=p, bs=b, gpus=g)
                     for b in BENCH.train_batch_sizes(d) for g in BENCH.gpus]
            keys += [dict(mode="predict", dim=d, precision=p, bs=b, gpus=1)
                     for b in BENCH.predict_batch_sizes(d)]
    return keys


def get_table_inputs(wildcards):
    """Everything tables.md reads, for the dims planned_dims() keeps."""
    ds = DS.format(dataset=DATASET)
    run = f"{ds}/{{stage}}/{RUN}"
    return {
        "evaluations": [f"{run}/fold{{fold}}.csv".format(stage="evaluate", **k) for k in run_keys()],
        "train": [f"{run}/fold{{fold}}/train.json".format(stage="train", **k) for k in run_keys()],
        "benchmarks": [
            f"{ds}/benchmark/{{mode}}-{{dim}}d-{{precision}}-bs{{bs}}-{{gpus}}gpu.json".format(**k)
            for k in benchmark_keys()
        ],
        "ensembles": get_ensembles(wildcards),
        "best": f"{ds}/best.json",
    }


# `--save-probabilities` for the fold predictions when the grid has 2D and 3D runs: the best
# rule (rules/best.smk) averages their saved validation probabilities into 2D + 3D ensembles.
SAVE_PROBABILITIES = "--save-probabilities" if {2, 3} <= set(GRID.dims) else ""


def get_best_inputs(wildcards):
    """Inputs of rules/best.smk, i.e. every run's fold predictions (with probabilities),
    postprocessing decision, fold models and plan (best.json names the last two)."""
    ds = DS.format(dataset=DATASET)
    runs = {RUN.format(**k) for k in run_keys()}
    return {
        "predictions": [f"{ds}/predict/{RUN}/fold{{fold}}".format(**k) for k in run_keys()],
        "decisions": [f"{ds}/postprocess/{r}.json" for r in sorted(runs)],
        "models": [f"{ds}/train/{RUN}/fold{{fold}}/final.pt".format(**k) for k in run_keys()],
        "plans": [f"{ds}/plans/{d}d.json" for d in planned_dims()],
    }


def get_ensembles(wildcards):
    """imagesTs predictions of each run's fold ensemble (rules/ensemble.smk), if enabled."""
    if not STUDY.inference.ensemble:
        return []
    ds = DS.format(dataset=DATASET)
    return [f"{ds}/ensemble/{RUN}".format(dim=d, precision=p, gpus=g)
            for d in planned_dims() for p in GRID.precisions for g in GRID.gpus]


def get_fold_files(pattern):
    """Input function: `pattern` (a rule output with {dataset}, the run wildcards and {fold})
    for every fold in GRID.folds of the run named by the wildcards, in that order. Rules
    whose outputs lack the {dataset} wildcard (the plots) get the study's dataset."""

    def files(wildcards):
        run = {"dataset": DATASET, **dict(wildcards.items())}
        return [pattern.format(**run, fold=f) for f in GRID.folds]

    return files


def get_gpus(wildcards):
    return int(wildcards.gpus)


def get_nodes(wildcards):
    """Nodes a run spans: one, unless it needs more GPUs than config gpus_per_node (a cluster
    fact the SLURM profile passes); then whole nodes, e.g. 16 GPUs of 8-GPU nodes = 2."""
    return nodes_for(int(wildcards.gpus), config["gpus_per_node"])


def get_multinode(wildcards):
    """`srun` for a run that spans nodes (the SLURM plugin then runs the rule's shell in the
    batch step, which starts one torchrun per node with srun), None (no resource) otherwise."""
    return "srun" if get_nodes(wildcards) > 1 else None


def get_launcher(wildcards):
    """`nnpipe` for one process; torchrun with one rank per GPU for more; across nodes, one
    torchrun per node through srun, meeting at a c10d rendezvous on the job's first node
    (nnpipe.training.launch, which tests/training/test_two_nodes.py runs as two nodes)."""
    return launcher(int(wildcards.gpus), get_nodes(wildcards))


# ---- plots (rules/tables.smk)


def get_all_evaluations(wildcards):
    """Evaluation CSVs of every run, run by run, folds in GRID.folds order."""
    return [rules.evaluate.output.scores.format(dataset=DATASET, **k) for k in run_keys()]


def get_benchmarks(wildcards):
    """Every benchmark JSON of the grid (the same list the tables read)."""
    return get_table_inputs(wildcards)["benchmarks"]


def get_plot_files(wildcards):
    """Every PNG that tables.md links (the list nnpipe.report.tables.study_plots names)."""
    from dataclasses import replace

    from nnpipe.report.tables import TableGrid, study_plots

    grid = replace(TableGrid.from_study(STUDY), dims=tuple(planned_dims()))
    return [f"{RESULTS}/{path}" for *_, path in study_plots(grid)]


def get_run_names(wildcards):
    """Run names in get_all_evaluations order (a params function: it waits for the
    fingerprint through that input function)."""
    return [RUN.format(dim=d, precision=p, gpus=g)
            for d in planned_dims() for p in GRID.precisions for g in GRID.gpus]
