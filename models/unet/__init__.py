"""The CoNIC 2022 "winning approach" U-Net (Zhang et al.): SE-ResNeXt encoder with a stride-1
stem, one shared dense decoder with Dropout2d, NP / HV / TP heads.

Modules: ``encoder`` (SE-ResNeXt and the Cadene ImageNet name mapping), ``net`` (the U-Net),
``targets`` (HoVer-Net's NP/HV targets and one-hot types), ``loss`` (the published terms),
``postproc`` (HoVer-Net's watershed at 40x with the 20x -> 40x detour), ``sampling``
(class-aware patch weights), ``family`` (:class:`UNetFamily`, registered as ``unet``).
"""
