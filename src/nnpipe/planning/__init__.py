"""Planning: dataset fingerprint -> target spacing, patch size, U-Net topology, batch size."""
