"""rayssl's pure-PyTorch model library: backbones, heads, losses, views, methods.

Never imports ray or mlflow, so it runs anywhere torch does. A method, one call for each thing
a training loop needs (the contract; ``ssl_models.methods.base`` says more)::

    method = ssl_models.create_method("simclr", in_channels=1, image_size=28)  # paper defaults
    views = method.make_views()                   # its views: policy, number of views, what its paper fixes
    out = method(views.apply(uint8_images_nhwc))  # one step on what views return: {"loss", "proxy_acc"}
    out["loss"].backward()
    method.on_step_end(step, total_steps)         # momentum / EMA updates, after the optimizer step
    features = method.embed(images)               # pooled encoder features, for probes

``ssl_models.method_arguments(name)`` lists what a method takes: its own arguments, then the
encoder's ``backbone``, ``in_channels`` and ``image_size``; a misspelt one is refused by name.
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
