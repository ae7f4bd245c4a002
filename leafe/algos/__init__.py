"""Pure tensor functions of the training objectives (no models, no data loading)."""
