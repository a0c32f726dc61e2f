"""Preprocessing: crop to the nonzero box, resample to the plan's spacing, normalize."""
