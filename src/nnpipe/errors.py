"""The one error type for bad user data: it always names the case, the file and the problem."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Raised when an input file or dataset is unusable.

    The message always says which case and which file, and what is wrong with it, so that a
    Snakemake log or a SLURM job log tells the user what to fix without a traceback hunt.
    """

    def __init__(self, problem: str, *, case: str | None = None, path: Path | str | None = None):
        where = []
        if case is not None:
            where.append(f"case {case!r}")
        if path is not None:
            where.append(f"file {str(path)!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + problem)
        self.case = case
        self.path = None if path is None else Path(path)
        self.problem = problem

    @classmethod
    def of(cls, exc: BaseException, *, case: str, path: Path | str | None = None) -> DataError:
        """``exc`` as the error of one case: itself if it is a :class:`DataError` already (it
        names its case), else a :class:`DataError` naming ``case`` and ``path`` with the
        exception's type and message (per-case work reports every failure this way)."""
        if isinstance(exc, DataError):
            return exc
        return cls(f"{type(exc).__name__}: {exc}", case=case, path=path)
