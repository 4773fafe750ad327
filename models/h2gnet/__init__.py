"""H2G-Net (Pedersen et al., Frontiers in Medicine 2022): whole-slide tumour segmentation by a
patch-wise MobileNetV2 heatmap refined by a U-Net on the slide thumbnail (see ``family.py``)."""
