"""resnetkit: Residual Networks (He et al., CVPR 2016), exact, trainable and explained."""

from . import resnet as _resnet  # noqa: F401  (registers the builders)
from .checkpoint import load
from .predict import Predictor
from .registry import create_model, list_models, register_model
from .resnet import ResNet
from .summary import Summary, summary

__version__ = "0.1.0"
__all__ = ["Predictor", "ResNet", "Summary", "create_model", "list_models", "load", "register_model", "summary"]
