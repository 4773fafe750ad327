"""HoVer-Net family: network, published-checkpoint loading (and, from the family module, the rest)."""

from models.hovernet.checkpoint import (
    from_published_state,
    load_encoder_weights,
    load_official_checkpoint,
    ours_to_published,
    published_to_ours,
    read_type_info,
    to_published_state,
)
from models.hovernet.net import GEOMETRIES, Geometry, HoVerNet, geometry_for, summary

__all__ = [
    "GEOMETRIES",
    "Geometry",
    "HoVerNet",
    "from_published_state",
    "geometry_for",
    "load_encoder_weights",
    "load_official_checkpoint",
    "ours_to_published",
    "published_to_ours",
    "read_type_info",
    "summary",
    "to_published_state",
]
