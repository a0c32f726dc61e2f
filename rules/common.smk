# Wiring only: config validation, the experiment grid, wildcard constraints, input functions.

import json

from snakemake.utils import validate

from nnpipe.config import study_config


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


def run_keys():
    """(dim, precision, gpus, fold) of every training run in the grid."""
    return [
        dict(dim=d, precision=p, gpus=g, fold=f)
        for d in GRID.dims
        for p in GRID.precisions
        for g in GRID.gpus
        for f in GRID.folds
    ]


def benchmark_keys():
    """(mode, dim, precision, bs, gpus) of every benchmark cell in the grid."""
    keys = []
    for d in GRID.dims:
        for p in BENCH.precisions:
            keys += [dict(mode="train", dim=d, precision=p, bs=b, gpus=g)
                     for b in BENCH.train_batch_sizes(d) for g in BENCH.gpus]
            keys += [dict(mode="predict", dim=d, precision=p, bs=b, gpus=1)
                     for b in BENCH.predict_batch_sizes(d)]
    return keys


def get_table_inputs(wildcards):
    ds = DS.format(dataset=DATASET)
    run = f"{ds}/{{stage}}/{RUN}"
    return {
        "evaluations": [f"{run}/fold{{fold}}.csv".format(stage="evaluate", **k) for k in run_keys()],
        "train": [f"{run}/fold{{fold}}/train.json".format(stage="train", **k) for k in run_keys()],
        "benchmarks": [
            f"{ds}/benchmark/{{mode}}-{{dim}}d-{{precision}}-bs{{bs}}-{{gpus}}gpu.json".format(**k)
            for k in benchmark_keys()
        ],
    }


def get_gpus(wildcards):
    return int(wildcards.gpus)


def get_launcher(wildcards):
    """`nnpipe` for one process; torchrun with one rank per GPU for more."""
    n = int(wildcards.gpus)
    if n == 1:
        return "nnpipe"
    return f"torchrun --standalone --nproc-per-node {n} -m nnpipe"
