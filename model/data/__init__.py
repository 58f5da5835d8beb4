"""Omniglot: data root resolution, decoded-image cache, class splits, seeded task sampling
and preprocessing of user images. See the modules for the why of each piece.

Everything but the sampler is torch-free, and the sampler is imported on first use, so the
backend and the web app can find the data and check images without importing torch.
"""
from .images import load_image_folder, preprocess_image
from .omniglot import Omniglot, load_omniglot
from .root import DataNotFoundError, DownloadError, download_omniglot, resolve_data_root

_SAMPLER_NAMES = ("Task", "TaskBatch", "TaskSampler")


def __getattr__(name):
    if name in _SAMPLER_NAMES:
        from . import sampler

        return getattr(sampler, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "resolve_data_root",
    "DataNotFoundError",
    "DownloadError",
    "load_omniglot",
    "Omniglot",
    "TaskSampler",
    "Task",
    "TaskBatch",
    "preprocess_image",
    "load_image_folder",
    "download_omniglot",
]
