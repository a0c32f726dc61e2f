"""The "Best configuration" section of tables.md, from ``results/<dataset>/best.json``
(:mod:`nnpipe.evaluation.best`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def best_section(record: Mapping[str, Any] | None, path: str) -> str:
    """``## Best configuration``: every candidate's cross-validation Dice in percent (after
    and before its postprocessing), the classes whose largest component is kept, and the
    choice; ``path`` (best.json) is named as missing when ``record`` is ``None``."""
    head = "\n## Best configuration\n\n"
    if record is None:
        return head + f"missing: {path}\n"
    chosen = record["best"]["name"]
    rows = []
    for c in record["candidates"]:
        name = f"**{c['name']}** (chosen)" if c["name"] == chosen else c["name"]
        kind = "ensemble (probabilities averaged)" if len(c["runs"]) > 1 else "run"
        kept = ", ".join(c.get("postprocess_applied", [])) or "none"
        rows.append([name, kind, _pct(c["dice"]), _pct(c["dice_before_postprocessing"]),
                     kept, str(c["n_cases"])])
    header = ["Candidate", "Kind", "Dice [%]", "Dice before postprocessing [%]",
              "Largest component kept", "Cases"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    folds = ", ".join(str(f) for f in record["folds"])
    return (head
            + f"Cross-validation Dice over folds {folds}: mean over the cases of the mean Dice\n"
            "over the classes scored in a case, after each candidate's largest-component\n"
            "postprocessing (decided per class from the same predictions). Ensembles average\n"
            "the saved validation probabilities of a 2D and a 3D run in the original grid.\n"
            f"Chosen: `{chosen}` ({path}); predict with it:\n"
            f"`nnpipe predict --model {path} --input DIR --output DIR`.\n\n"
            + "\n".join(lines) + "\n")


def _pct(value: float | None) -> str:
    return "n/a (no class scored)" if value is None else f"{100 * value:.2f}"
