"""Model families. Importing this package registers every architecture.

One module per family; each registers its builders with `@register_architecture`.
A test fails if a module here registers nothing, so a forgotten import breaks CI.
"""
from autoseg.architectures import unet  # noqa: F401
from autoseg.architectures import pix2pix  # noqa: F401
from autoseg.architectures import segnet  # noqa: F401
from autoseg.architectures import deeplabv3plus  # noqa: F401
