"""Shared helpers: errors, image/label I/O, instance utilities, synthetic data."""
