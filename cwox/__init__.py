"""cwox: whole-output, contrastive explanations for image classifiers.

One namespace. The stage folders at the top of the repository install as subpackages
(``setup.cfg``'s ``package_dir``): ``cwox.core`` (the ground floor every stage shares:
models, images, devices, batching, the top-K rule), ``cwox.offline`` (documents),
``cwox.hlta`` (the latent tree), ``cwox.store`` (Zarr persistence), ``cwox.online``
(explanations), ``cwox.pipelines`` (the library's jobs) and the command line
(``cwox.cli``, ``cwox.commands``).
"""

__version__ = "0.1.0"
