"""Fixtures of the fault-injection suite (defined in faultkit.py next to the helpers they use)."""

from faultkit import reference_latents, reference_run, reference_samples, tiny_vae  # noqa: F401
