"""Measuring tools that are not the product: comparisons with nnU-Net v2 (accuracy,
prediction, preprocessing) and the GPU check suite. They import nnpipe; nnpipe never imports
them. Run each from the project root as a module, e.g. ``python -m benchmarks.accuracy_compare
--help`` (``-m`` puts the working directory on ``sys.path``, so ``benchmarks`` imports without
installing it). docs/benchmarks.md has the commands and their results."""
