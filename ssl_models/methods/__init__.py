"""Every SSL method; importing this package registers each one (``ssl_models.list_methods()``).

A new method is a module here with a class under ``@register_method(name)`` that sets its
``recipe = Recipe(...)`` (``ssl_models.recipes``), imported below.
"""

from ssl_models.methods import (  # noqa: F401  (imported to register)
    barlow_twins,
    byol,
    colorization,
    cpc,
    dino,
    ibot,
    ijepa,
    inpainting,
    jigsaw,
    mae,
    moco,
    mocov3,
    nnclr,
    relative_position,
    rotation,
    simclr,
    simmim,
    simsiam,
    swav,
    triplet,
    vibcreg,
    vicreg,
)
