"""rayssl's pure-PyTorch model library: backbones, heads, losses, views, methods.

Never imports ray or mlflow, so it runs anywhere torch does.
"""

from ssl_models import methods  # noqa: F401  (registers the methods)
from ssl_models.backbones import create_backbone, list_backbones
from ssl_models.registry import create_method, list_methods, method_arguments, method_class, register_method
from ssl_models.views import create_views, list_views, model_views

__all__ = [
    "create_backbone",
    "create_method",
    "create_views",
    "list_backbones",
    "list_methods",
    "list_views",
    "method_arguments",
    "method_class",
    "model_views",
    "register_method",
]
