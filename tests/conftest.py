"""Shared fixtures. The Omniglot ones use the real data and the default decode cache
(~/.cache/lamanas or $XDG_CACHE_HOME/lamanas), so only the very first run decodes PNGs.

Imports of model.data (and so torch) happen inside the fixtures: tests that must run
without torch are not affected by this file.
"""
import pytest


@pytest.fixture(scope="session")
def data_root():
    """The Omniglot data root, resolved like the CLI does; skips when there is no data."""
    from model.data import DataNotFoundError, resolve_data_root

    try:
        return resolve_data_root()
    except DataNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def omniglot(data_root):
    """All of Omniglot at 28x28 (an `Omniglot` object), loaded once per test session."""
    import torch

    from model.data import load_omniglot

    torch.set_num_threads(1)  # the test machine is shared
    return load_omniglot(data_root)
