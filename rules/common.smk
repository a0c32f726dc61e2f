# Wiring only: config validation, the experiment grid, wildcard constraints, input functions.
# Paths follow nnpipe.study (the study grammar): everything of a study, its logs and
# Snakemake's timings included, lives under results/<dataset>/.

import functools
import json
import os

from nnpipe.preflight import workflow_study
from nnpipe.study import BENCH_NAME, CASCADE_STAGES, FOLD, RUN, WILDCARDS, StudyPaths, previous_run, run_name
from nnpipe.training.launch import launcher, nodes_for


# config/schema.yaml's defaults filled in; a config error (with "did you mean") or what this
# machine cannot run (amp without a GPU, ...) stops here in one paragraph, before any job.
# The machine is checked only where Snakemake runs the jobs itself: not inside each job, and
# not under a cluster profile. Snakemake does not know its executor yet when it reads this
# file (workflow.local_exec is still True under --executor slurm), so a cluster profile says
# so by passing the cluster fact gpus_per_node (profiles/slurm, tests/slurm/profile).
STUDY = workflow_study(config, check_machine=workflow.is_main_process and workflow.local_exec
                       and not config.get("gpus_per_node"))
GRID = STUDY.grid
BENCH = STUDY.benchmark
DATASET = STUDY.dataset.name
RESULTS = STUDY.results_dir
# the templates of one study's tree, {dataset} kept as a wildcard (nnpipe.study.StudyPaths);
# {config} in RUN: 2d, 3d, or a stage of the low-resolution cascade (3d_lowres, 3d_cascade)
PATHS = StudyPaths(RESULTS, "{dataset}")
DS = PATHS.root
FILE = PATHS.template  # FILE("model"): a rule's output, with the grammar's wildcards
LOGS = PATHS.logs  # each job's log (.log) and Snakemake timing (.tsv), under the dataset
STUDY_PATHS = StudyPaths(RESULTS, DATASET)  # the configured study's files
TABLES = STUDY_PATHS.latest_tables


# what each wildcard may hold (configurations, precisions, ...): nnpipe.study.WILDCARDS
wildcard_constraints:
    dataset=DATASET,
    **{k: WILDCARDS[k] for k in ("dim", "config", "precision", "gpus", "fold", "bs", "mode")},


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


# ---- the low-resolution cascade: the fingerprint decides too (nnpipe.planning.cascade)


@functools.cache
def _cascade_decision(path, mtime_ns):
    """(planned, why) of nnpipe.planning.cascade.cascade_decision for the fingerprint JSON at
    `path`, once per version of the file (mtime_ns)."""
    from nnpipe.planning.cascade import cascade_decision
    from nnpipe.planning.fingerprint import Fingerprint
    from nnpipe.planning.planner import settings_from_config

    with open(path) as f:
        fp = Fingerprint.from_dict(json.load(f))
    return cascade_decision(fp, settings_from_config(STUDY.planning), STUDY.planning.cascade,
                            STUDY.planning.preset)


def cascade_decision():
    """(planned, why): whether the study runs 3d_lowres and 3d_cascade. nnU-Net's rule
    (patch < 25 % of the median image), for 3D datasets, when the grid trains every fold of
    the split: the cascade trains on the low-resolution predictions of every training case,
    each made by the fold model that did not see it. Waits for the fingerprint checkpoint."""
    from nnpipe.training.splits import NUM_FOLDS

    if STUDY.planning.cascade == "off":
        return False, "planning.cascade is off"
    if 3 not in planned_dims():
        return False, "the study has no 3D runs"
    if sorted(GRID.folds) != list(range(NUM_FOLDS)):
        return False, (f"grid.folds is {list(GRID.folds)}: the cascade needs every fold of the "
                       f"{NUM_FOLDS}-fold split")
    path = checkpoints.fingerprint.get(dataset=DATASET).output.fingerprint
    return _cascade_decision(path, os.stat(path).st_mtime_ns)


def planned_configs():
    """The configurations whose runs are in the DAG: 2d/3d of planned_dims(), then the
    cascade's two stages where cascade_decision() plans them."""
    configs = [f"{d}d" for d in planned_dims()]
    return configs + (list(CASCADE_STAGES) if cascade_decision()[0] else [])


def get_cascade(wildcards):
    """cascade_decision() for the tables, as {"planned": bool, "why": str} (a params
    function)."""
    planned, why = cascade_decision()
    return {"planned": planned, "why": why}


def get_left_out(wildcards):
    """left_out_dims() for the tables (a params function: the tables' input waits for the
    fingerprint)."""
    return left_out_dims()


def run_keys():
    """(config, precision, gpus, fold) of every training run the study makes
    (planned_configs)."""
    return [
        dict(config=c, precision=p, gpus=g, fold=f)
        for c in planned_configs()
        for p in GRID.precisions
        for g in GRID.gpus
        for f in GRID.folds
    ]


def benchmark_keys():
    """(mode, dim, precision, bs, gpus) of every benchmark cell the study makes."""
    keys = []
    for d in planned_dims():
        for p in BENCH.cells_precisions():
            keys += [dict(mode="train", dim=d, precision=p, bs=b, gpus=g)
                     for b in BENCH.train_batch_sizes(d) for g in BENCH.gpus]
            keys += [dict(mode="predict", dim=d, precision=p, bs=b, gpus=1)
                     for b in BENCH.predict_batch_sizes(d)]
    return keys


def get_table_inputs(wildcards):
    """Everything tables.md reads, for the configurations planned_configs() keeps (the
    tables script reads these files, nothing else: nnpipe.report.tables.TableInputs)."""
    return {
        "evaluations": [STUDY_PATHS.path("scores", **k) for k in run_keys()],
        "train": [STUDY_PATHS.path("train_json", **k) for k in run_keys()],
        "benchmarks": [STUDY_PATHS.path("benchmark", **k) for k in benchmark_keys()],
        "ensembles": get_ensembles(wildcards),
        "best": STUDY_PATHS.best,
        "dataset": STUDY_PATHS.path("dataset_json"),
    }


# `--save-probabilities` for the fold predictions when the grid has 2D and 3D runs: the best
# rule (rules/best.smk) averages their saved validation probabilities into 2D + 3D ensembles.
SAVE_PROBABILITIES = "--save-probabilities" if {2, 3} <= set(GRID.dims) else ""


def get_best_inputs(wildcards):
    """Inputs of rules/best.smk, i.e. every run's fold predictions (with probabilities),
    postprocessing decision, fold models and plan (best.json names the last two)."""
    runs = sorted({run_name(k["config"], k["precision"], k["gpus"]) for k in run_keys()})
    return {
        "predictions": [STUDY_PATHS.path("predictions", **k) for k in run_keys()],
        "decisions": [STUDY_PATHS.run_file("decision", r) for r in runs],
        "models": [STUDY_PATHS.path("model", **k) for k in run_keys()],
        "plans": [STUDY_PATHS.path("plan", config=c) for c in planned_configs()],
    }


def get_ensembles(wildcards):
    """imagesTs predictions of each run's fold ensemble (rules/ensemble.smk), if enabled."""
    if not STUDY.inference.ensemble:
        return []
    return [STUDY_PATHS.path("ensemble", config=c, precision=p, gpus=g)
            for c in planned_configs() for p in GRID.precisions for g in GRID.gpus]


def get_fold_files(pattern):
    """Input function: `pattern` (a rule output with {dataset}, the run wildcards and {fold})
    for every fold in GRID.folds of the run named by the wildcards, in that order. Rules
    whose outputs lack the {dataset} wildcard (the plots) get the study's dataset."""

    def files(wildcards):
        run = {"dataset": DATASET, **dict(wildcards.items())}
        return [pattern.format(**run, fold=f) for f in GRID.folds]

    return files


def get_all_cores(wildcards):
    """Every core Snakemake has (--cores; the SLURM profile's `cores`), read when a job is
    made, not when the workflow is parsed: `snakemake --report` needs no --cores."""
    return workflow.cores


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
    return [STUDY_PATHS.path("scores", **k) for k in run_keys()]


def get_all_plans(wildcards):
    """The plan of every configuration in the DAG (planned_configs); the plots name the
    classes from their label scheme, one for the whole dataset."""
    return [STUDY_PATHS.path("plan", config=c) for c in planned_configs()]


def get_benchmarks(wildcards):
    """Every benchmark JSON of the grid (the same list the tables read)."""
    return get_table_inputs(wildcards)["benchmarks"]


def get_table_files(wildcards):
    """The tables rule's inputs (get_table_inputs, get_plot_files) as one dict: what
    latest_tables renders results/tables.md from (a params function)."""
    return {**get_table_inputs(wildcards), "plots": get_plot_files(wildcards)}


def get_plot_files(wildcards):
    """Every PNG that tables.md links (the list nnpipe.report.tables.study_plots names)."""
    from dataclasses import replace

    from nnpipe.report.tables import TableGrid, study_plots

    grid = replace(TableGrid.from_study(STUDY), dims=tuple(planned_dims()),
                   cascade=cascade_decision()[0])
    return [path for *_, path in study_plots(grid, STUDY_PATHS)]


def get_run_names(wildcards):
    """Run names in get_all_evaluations order (a params function: it waits for the
    fingerprint through that input function)."""
    return [run_name(c, p, g)
            for c in planned_configs() for p in GRID.precisions for g in GRID.gpus]


# ---- the cascade's inputs (rules/train.smk, predict.smk, cascade.smk, ensemble.smk)

def lowres_run(wildcards):
    """3d_lowres-<precision>-<gpus>gpu: the previous stage of the run 3d_cascade-<precision>-
    <gpus>gpu (nnpipe.study.previous_run) named by the wildcards."""
    return previous_run(run_name("3d_cascade", wildcards.precision, wildcards.gpus))


def get_train_inputs(wildcards):
    """The preprocessed folder's manifest (3d_cascade trains on the 3D folder) and, for
    3d_cascade, its plan and the low-resolution segmentations (rules/cascade.smk)."""
    paths = StudyPaths(RESULTS, wildcards.dataset)
    if wildcards.config != "3d_cascade":
        return {"manifest": paths.path("manifest", config=wildcards.config)}
    return {"manifest": paths.path("manifest", config="3d"),
            "plan": paths.path("plan", config="3d_cascade"),
            "previous": paths.path("previous", config=wildcards.config,
                                   precision=wildcards.precision, gpus=wildcards.gpus)}


def get_train_cascade_args(wildcards, input):
    """`--plan P --previous DIR` for 3d_cascade, nothing for the other configurations."""
    if wildcards.config != "3d_cascade":
        return ""
    return f"--plan {input.plan} --previous {input.previous}"


def get_lowres_predictions(wildcards):
    """The 3d_lowres run's validation predictions of every fold: each training case once,
    predicted by the fold model that did not train on it."""
    from nnpipe.training.splits import NUM_FOLDS

    paths = StudyPaths(RESULTS, wildcards.dataset)
    run = lowres_run(wildcards)
    return [paths.run_file("predictions", run, fold=f) for f in range(NUM_FOLDS)]


def get_predict_previous(wildcards):
    """3d_cascade: the 3d_lowres prediction of the same fold's validation cases; none
    otherwise."""
    if wildcards.config != "3d_cascade":
        return []
    paths = StudyPaths(RESULTS, wildcards.dataset)
    return paths.run_file("predictions", lowres_run(wildcards), fold=wildcards.fold)


def get_predict_previous_args(wildcards, input):
    """`--previous DIR` (get_predict_previous) for 3d_cascade, nothing otherwise."""
    return f"--previous {input.previous}" if wildcards.config == "3d_cascade" else ""


def get_previous_models(wildcards):
    """3d_cascade: the 3d_lowres fold models, which `nnpipe predict` runs first on each test
    image (found beside the cascade's fold models); none otherwise."""
    if wildcards.config != "3d_cascade":
        return []
    paths = StudyPaths(RESULTS, wildcards.dataset)
    return [paths.run_file("model", lowres_run(wildcards), fold=f) for f in GRID.folds]
