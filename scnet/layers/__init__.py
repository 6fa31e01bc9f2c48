"""Self-calibrated convolution as a layer of any network: :class:`SelfCalibratedConv2d` and :func:`convert_to_sc`."""

from .conv2d import SelfCalibratedConv2d
from .convert import ConversionReport, ConvertedConv, SkippedConv, convert_to_sc, default_norm_layer, ineligibility
from .min_size import smallest_input_size

__all__ = [
    "ConversionReport",
    "ConvertedConv",
    "SelfCalibratedConv2d",
    "SkippedConv",
    "convert_to_sc",
    "default_norm_layer",
    "ineligibility",
    "smallest_input_size",
]
