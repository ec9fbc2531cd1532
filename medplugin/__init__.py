"""medplugin: MONAI components and bundles for 2D and 3D diagnostic imaging."""

__version__ = "0.1.0"

from medplugin.errors import BadInputError  # noqa: E402

__all__ = ["BadInputError", "__version__"]
