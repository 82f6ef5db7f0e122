"""VideoPrior Edit: video diffusion models as image and video editors (library part, no ComfyUI imports)."""

__version__ = "0.1.0"

from .errors import InputError, ModelFileError, VPEError  # noqa: E402,F401
