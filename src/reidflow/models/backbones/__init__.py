"""Built-in backbone families; importing this package registers them (see ``models.registry``)."""

from reidflow.models.backbones import densenet, mobilenetv2, osnet, resnest, resnet, resnext
from reidflow.models.backbones.base import Backbone

__all__ = ["Backbone", "densenet", "mobilenetv2", "osnet", "resnest", "resnet", "resnext"]
