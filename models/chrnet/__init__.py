"""CHR-Net (Gao et al., MICCAI 2021): nucleus segmentation by W-Net and grading by two
high-resolution feature extractors that learn cross-category groupings of the classes.

Modules: ``net`` (CHRNet, the ResNet-34 encoder and its ImageNet name mapping), ``targets``
(groupings, eroded instances, marker map, target builder), ``loss`` (five CE/MAE terms and
optional Dice), ``postproc`` (the published marker watershed), ``family``
(:class:`CHRNetFamily`, registered as ``chrnet``).
"""
