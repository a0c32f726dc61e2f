"""``--model`` to a :class:`~nnpipe.inference.model_spec.ModelSpec`: which reader each kind of
path goes to (the table in :mod:`nnpipe.inference.model_spec`). It sits above both readers,
the checkpoint/run/best.json ones and the archive's, so neither imports the other back."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nnpipe.inference.archive import load_archive
from nnpipe.inference.model_spec import (
    ModelSpec,
    fold_dirs,
    from_best_json,
    from_checkpoints,
    from_run_folder,
    has_checkpoint,
)


def resolve_model(paths: Sequence[Path | str]) -> ModelSpec:
    """The :class:`ModelSpec` of ``--model`` (see the module docstring for what it accepts).

    Raises:
        ValueError / FileNotFoundError: naming the path and what is wrong with it.
    """
    if not paths:
        raise ValueError("no model given")
    if len(paths) == 1:
        path = Path(paths[0])
        if path.suffix == ".zip":
            return load_archive(path)
        if path.suffix == ".json":
            return from_best_json(path)
        if path.is_dir() and not has_checkpoint(path) and fold_dirs(path):
            return from_run_folder(path)
    for p in paths:
        if Path(p).suffix in (".zip", ".json"):
            raise ValueError(f"model {str(p)!r}: an archive or best.json is a whole model; "
                             "give it alone to --model")
    return from_checkpoints(paths)
