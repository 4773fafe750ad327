"""HistoSegNet (Chan et al., ICCV 2019): tissue-type maps from a patch classifier trained on patch labels only."""
