"""Training: splits, precision, loss, checkpoints and the plain PyTorch training loop."""
