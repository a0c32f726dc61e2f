# Wiring of rules/predict_sets.smk (kept beside it so that the rule file holds rules only
# and rules/common.smk stays untouched): the config's prediction sets and input functions.

import re

from nnpipe.inference.shards import prediction_sets
from nnpipe.study import parse_run_name

PREDICT_SETS = prediction_sets(config.get("predict"))
SET_NAMES = "|".join(re.escape(n) for n in PREDICT_SETS) or "(?!)"
PREDICTIONS = f"{DS}/predictions/{{name}}"


def get_predict_set_model(wildcards):
    """What the set's `model` names, as input files: best.json; a run's fold models, its
    postprocessing decision and (3d_cascade) its 3d_lowres fold models; or the path itself."""
    entry = PREDICT_SETS[wildcards.name]
    ds = DS.format(dataset=wildcards.dataset)
    if entry.model == "best":
        return {"model": f"{ds}/best.json"}
    try:  # a run of the grid: {config}-{precision}-{gpus}gpu (nnpipe.study.RUN)
        run = parse_run_name(entry.model)
    except ValueError:
        return {"model": entry.model}
    keys = dict(dataset=wildcards.dataset, **run)
    files = {"model": get_fold_files(rules.train.output.model)(keys),
             "decision": rules.postprocess.output.decision.format(**keys)}
    if previous_run(entry.model) is not None:  # a cascade stage: its lowres fold models,
        # found beside the cascade's fold models by nnpipe predict
        files["previous"] = get_previous_models(_Keys(keys))
    return files


class _Keys(dict):
    """Wildcards from a dict, for the input functions of rules/common.smk."""

    __getattr__ = dict.__getitem__


def get_predict_set_input(wildcards):
    return PREDICT_SETS[wildcards.name].input


def get_predict_set_args(wildcards, input):
    """`--postprocess` for a run's decision, `--layout` when the set gives one (an nnU-Net
    v2 model reads v2's layout only: `nnunetv2` is its own, `msd` is refused),
    `--configuration` for a v2 dataset folder or zip of several."""
    decision = getattr(input, "decision", None)
    args = [f"--postprocess {decision}"] if decision else []
    layout = PREDICT_SETS[wildcards.name].layout
    if layout and is_v2_set(wildcards.name):
        if layout != "nnunetv2":
            raise ValueError(f"config key predict/{wildcards.name}/layout: the model is an "
                             f"nnU-Net v2 model, which reads the nnunetv2 layout, not {layout!r}")
        layout = None
    configuration = PREDICT_SETS[wildcards.name].configuration
    if configuration:  # nnpipe predict refuses it for anything but a v2 model, naming it
        args.append(f"--configuration {configuration}")
    return " ".join(args + ([f"--layout {layout}"] if layout else []))


def is_v2_set(name):
    """Whether the set's model is a path to an nnU-Net v2 model (folder or zip)."""
    from nnpipe.v2.model import is_v2_model  # torch: only when a set asks

    model = PREDICT_SETS[name].model
    return model != "best" and not _is_run_name(model) and is_v2_model(model)


def _is_run_name(model):
    """Whether a set's `model` names a run of the grid (nnpipe.study.RUN), not a path."""
    try:
        parse_run_name(model)
    except ValueError:
        return False
    return True


def get_predict_set_records(wildcards):
    """One part record per part of the set."""
    n = PREDICT_SETS[wildcards.name].parts
    return [rules.predict_part.output.record.format(**wildcards, part=i, parts=n)
            for i in range(n)]


def get_predict_set_parts_dir(wildcards):
    """The folder the set's parts write into (predictions/<NAME>.parts)."""
    return f"{PREDICTIONS}.parts".format(**wildcards)


def get_predict_set_targets(wildcards):
    return [PREDICTIONS.format(dataset=DATASET, name=n) for n in PREDICT_SETS]
