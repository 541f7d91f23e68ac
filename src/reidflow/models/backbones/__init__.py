"""Built-in backbone families; importing this package registers them (see ``models.registry``)."""

from reidflow.models.backbones import mobilenetv2, osnet, resnet
from reidflow.models.backbones.base import Backbone

__all__ = ["Backbone", "mobilenetv2", "osnet", "resnet"]
