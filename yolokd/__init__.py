"""yolokd: knowledge distillation for Ultralytics YOLO detectors.

Importing yolokd sets Ultralytics' offline switches (``YOLO_OFFLINE``, ``YOLO_AUTOINSTALL``) before Ultralytics itself
is imported, so import yolokd first. The heavy objects are loaded lazily: ``import yolokd`` stays fast.
"""

from yolokd.utils.offline import set_offline_env

set_offline_env()

__version__ = "0.1.0"
__all__ = ["KDTrainer", "YoloKD", "__version__"]


def __getattr__(name: str):
    """Lazy access to the public classes, so that `yolokd methods` does not import torch and Ultralytics."""
    if name == "YoloKD":
        from yolokd.api import YoloKD

        return YoloKD
    if name == "KDTrainer":
        from yolokd.engine.trainer import KDTrainer

        return KDTrainer
    raise AttributeError(f"module 'yolokd' has no attribute {name!r}")
