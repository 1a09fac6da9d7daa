"""The ground floor: what every stage shares (models, images, devices, batching, top-K, split).

It also holds the version, so that a stage can record it without importing the
``cwox`` face above it (layers point down only; see setup.cfg's import contract).
"""

__version__ = "0.1.0"
