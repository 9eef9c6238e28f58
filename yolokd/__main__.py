"""``python -m yolokd ...`` runs the ``yolokd`` command, e.g. on a machine where only the source tree is on the path."""

from yolokd.cli import entrypoint

entrypoint()
