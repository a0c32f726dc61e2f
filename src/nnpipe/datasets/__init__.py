"""Datasets: on-disk layouts (MSD, nnU-Net v2 raw), the embedded generator, downloads."""
