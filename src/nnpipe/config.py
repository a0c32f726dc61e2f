"""Study configuration: YAML validated against ``schema.yaml``, then frozen dataclasses.

The schema (shipped in the package, linked as ``config/schema.yaml`` for Snakemake) is the one
place that lists every key with its type, description and default. Code below the CLI never
indexes raw dicts: it receives the typed sections defined here.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

PRECISIONS = ("fp32", "tf32", "amp", "bf16")


def load_schema() -> dict[str, Any]:
    text = resources.files("nnpipe").joinpath("schema.yaml").read_text()
    return yaml.safe_load(text)


def _fill_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Return ``value`` with every missing key that has a schema default filled in (deeply)."""
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if key in out:
            out[key] = _fill_defaults(sub, out[key])
    return out


def validate_config(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Validate ``raw`` against the schema, filling defaults; ``ValueError`` names the key."""
    schema = load_schema()
    filled = _fill_defaults(schema, raw or {})
    try:
        jsonschema.validate(filled, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise ValueError(f"config key {where}: {_explain(exc)}") from None
    return filled


def _explain(exc: jsonschema.ValidationError) -> str:
    """The error in one sentence: for an unknown key, the keys allowed there and the nearest
    one ("did you mean `training`?"), never the schema itself."""
    if exc.validator != "additionalProperties" or not isinstance(exc.instance, dict):
        return exc.message
    schema = exc.schema if isinstance(exc.schema, dict) else {}
    allowed = sorted(schema.get("properties", {}))
    parts = []
    for key in sorted(k for k in exc.instance if k not in allowed):
        near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
        parts.append(f"unknown key `{key}`" + (f" (did you mean `{near[0]}`?)" if near else ""))
    return "; ".join(parts) + f"; the keys here are: {', '.join(allowed)}"


@dataclass(frozen=True)
class EmbeddedSettings:
    n_train: int
    n_test: int
    seed: int
    resolution_mm: float
    annotate_every: int = 1  # sparse labels: every n-th axial slice annotated, rest "ignore"


@dataclass(frozen=True)
class DatasetSettings:
    name: str
    source: str
    path: str
    embedded: EmbeddedSettings
    task: str = ""  # MSD task (source msd, planning.preset reference)


@dataclass(frozen=True)
class GridSettings:
    dims: tuple[int, ...]
    precisions: tuple[str, ...]
    gpus: tuple[int, ...]
    folds: tuple[int, ...]


@dataclass(frozen=True)
class PlanningSettings:
    max_patch_voxels_3d: int
    max_patch_voxels_2d: int
    base_filters: int
    max_batch_size: int
    batch_voxels_3d: int
    batch_voxels_2d: int
    preset: str = "auto"  # auto | reference
    network: str = "plain"  # plain | resenc_m | resenc_l (nnpipe.planning.network.NETWORKS)
    vram_target_gb: float = 0.0  # ResEnc presets: GPU memory per training step; 0 = preset's
    cascade: str = "auto"  # auto | off: the low-resolution cascade (nnpipe.planning.cascade)
    like: str = ""  # a trained model whose plan the dataset takes (nnpipe.finetune.plan_like)
    regions: bool = False  # BraTS region mode, recorded in the plan (nnpipe.labels.LabelScheme)


@dataclass(frozen=True)
class PreprocessSettings:
    workers: int
    memory_gb: float = 0.0  # budget for cases in flight; 0 = workers alone bound memory


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int
    steps_per_epoch: int
    val_patches: int
    optimizer: str
    learning_rate: float
    weight_decay: float
    foreground_prob: float
    augment: bool
    deep_supervision: bool
    batch_size: int
    seed: int
    deterministic: bool
    loader: str
    extra_augmentations: tuple[str, ...]
    compile: bool
    channels_last: bool
    regions: bool = False  # deprecated: planning.regions (only plans older than the label concept)
    init_weights: str = ""  # a trained model to start from (nnpipe.finetune)
    warmup_steps: int = -1  # linear lr warm-up steps; -1: 5 % of the run with init_weights


@dataclass(frozen=True)
class InferenceSettings:
    overlap: float
    blend: str
    tta: bool
    batch_size: int
    save_probabilities: bool = False
    ensemble: bool = True
    precision: str = "fp32"  # forward passes: fp32 or bf16 autocast
    runtime: str = "eager"  # eager | compile | onnxruntime | openvino (inference/runtime.py)
    memory_gb: float = 0.0  # refuse a case whose estimated peak exceeds this; 0 = machine RAM


@dataclass(frozen=True)
class EvaluationSettings:
    nsd_tolerance_mm: float = 1.0


@dataclass(frozen=True)
class BenchmarkSettings:
    precisions: tuple[str, ...]
    gpus: tuple[int, ...]
    train_batch_sizes_2d: tuple[int, ...]
    train_batch_sizes_3d: tuple[int, ...]
    predict_batch_sizes_2d: tuple[int, ...]
    predict_batch_sizes_3d: tuple[int, ...]
    patch_size_2d: tuple[int, ...]
    patch_size_3d: tuple[int, ...]
    warmup_steps: int
    timed_steps: int
    synthetic: bool
    max_warmup_s: float = 30.0  # warm-up goes on until step times agree, at most this long
    max_timing_s: float = 60.0  # timing goes on to 368 steps (p99), at most this long
    enabled: bool = True  # false: no benchmark cell at all (cells_precisions() is empty)

    def cells_precisions(self) -> tuple[str, ...]:
        """The precisions benchmarked: ``precisions``, or none when ``enabled`` is false."""
        return self.precisions if self.enabled else ()

    def train_batch_sizes(self, dim: int) -> tuple[int, ...]:
        return self.train_batch_sizes_2d if dim == 2 else self.train_batch_sizes_3d

    def predict_batch_sizes(self, dim: int) -> tuple[int, ...]:
        return self.predict_batch_sizes_2d if dim == 2 else self.predict_batch_sizes_3d

    def patch_size(self, dim: int) -> tuple[int, ...]:
        return self.patch_size_2d if dim == 2 else self.patch_size_3d


@dataclass(frozen=True)
class StudyConfig:
    results_dir: str
    dataset: DatasetSettings
    grid: GridSettings
    planning: PlanningSettings
    preprocess: PreprocessSettings
    training: TrainingSettings
    inference: InferenceSettings
    benchmark: BenchmarkSettings
    evaluation: EvaluationSettings


def _build(cls: type, value: dict[str, Any]) -> Any:
    kwargs = {}
    for f in fields(cls):
        v = value[f.name]
        sub = _SECTIONS.get((cls, f.name))
        if sub is not None:
            v = _build(sub, v)
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


_SECTIONS: dict[tuple[type, str], type] = {
    (StudyConfig, "dataset"): DatasetSettings,
    (DatasetSettings, "embedded"): EmbeddedSettings,
    (StudyConfig, "grid"): GridSettings,
    (StudyConfig, "planning"): PlanningSettings,
    (StudyConfig, "preprocess"): PreprocessSettings,
    (StudyConfig, "training"): TrainingSettings,
    (StudyConfig, "inference"): InferenceSettings,
    (StudyConfig, "benchmark"): BenchmarkSettings,
    (StudyConfig, "evaluation"): EvaluationSettings,
}


def study_config(raw: dict[str, Any] | None) -> StudyConfig:
    """Validate a raw config mapping (as Snakemake holds it) into a :class:`StudyConfig`."""
    return _build(StudyConfig, validate_config(raw))


def load_config(path: Path | str | None) -> StudyConfig:
    """Read a YAML config file (``None``: all defaults) into a :class:`StudyConfig`."""
    if path is None:
        return study_config({})
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"config file {str(path)!r} cannot be read: {exc}") from exc
    try:
        return study_config(raw)
    except ValueError as exc:
        raise ValueError(f"config file {str(path)!r}: {exc}") from None
