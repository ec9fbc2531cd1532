"""What pyproject.toml cannot say: the bundles and overlays of the checkout travel inside the package.

The checkout keeps ``bundles/<name>/`` and the ``configs/*.yaml`` overlays at its root (the README and users run
them from there). A wheel maps them into the package as ``medplugin/_bundles`` and ``medplugin/_overlays``
(``package_dir``), with their configs, docs and LICENSE as package data; ``models/`` and ``runs/`` never go in.
pyproject.toml's package discovery cannot add packages from other folders, hence this file; all metadata stays in
pyproject.toml. ``medplugin.resources`` finds the copies.
"""

from setuptools import find_namespace_packages, setup

DATA = {"medplugin._bundles": "bundles", "medplugin._overlays": "configs"}

setup(
    packages=[*find_namespace_packages(include=["medplugin", "medplugin.*"], exclude=["*.__pycache__"]), *DATA],
    package_dir=DATA,
    package_data={
        "medplugin._bundles": ["*/LICENSE", "*/configs/**/*", "*/docs/**/*"],
        "medplugin._overlays": ["*.yaml"],
    },
)
