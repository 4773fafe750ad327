"""Inference: tiling, window prediction, raw prediction files, the folder runner, and
processing and scoring of raw files (``infer.py`` and ``process.py``)."""
