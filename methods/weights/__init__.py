"""Import pretrained ResNet weights from other codebases (``detlab import-weights``)."""

from detlab.methods.weights.convert import FORMATS, convert
from detlab.methods.weights.resnet import WeightsError, build_resnet, describe, tf_same

__all__ = ["FORMATS", "WeightsError", "build_resnet", "convert", "describe", "tf_same"]
