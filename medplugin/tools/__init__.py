"""Tooling around the library: what creates environments or starts servers.

- :mod:`medplugin.tools.monailabel`: MONAI Label's own virtual environment and a ready ``monaibundle`` app folder.
- :mod:`medplugin.tools.review`: TensorBoard for a run folder, free ports, waiting for and stopping servers.

The ``medplugin`` command uses them. No module a bundle config imports (``medplugin.transforms``, ``handlers``,
``networks``, ``data``, ``metrics``, ``io``, ...) imports this subpackage; ``tests/test_tools_separation.py``
checks that.
"""
