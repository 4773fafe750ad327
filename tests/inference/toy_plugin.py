"""Plugin module registering the inference toy families for child processes
(``HISTOSEG_PLUGINS=tests.inference.toy_plugin``), e.g. ranks started by ``torchrun``."""

from models import register_family
from tests.inference.toy_family import ToyFamily, ToySemanticFamily

register_family(ToyFamily.name, ToyFamily)
register_family(ToySemanticFamily.name, ToySemanticFamily)
