"""Shared helpers at the bottom of the layers: errors, image/label I/O, instance utilities, precision."""
