"""Sampling: checkpoints to images, from a quick grid to 50K-sample evaluation batches."""
