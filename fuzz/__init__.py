"""archfuzz layout discovery: the layout IR, the decoder synthesizer and the materializer."""

from . import strategies
from .decoder import DecoderSpec, LayerSpec, build
from .errors import ArchfuzzError, BadInput, LayoutError, Refusal
from .layout import Layout
from .materialize import GraphModel, materialize

__all__ = ["Layout", "DecoderSpec", "LayerSpec", "build", "materialize", "GraphModel", "strategies",
           "ArchfuzzError", "BadInput", "LayoutError", "Refusal"]
