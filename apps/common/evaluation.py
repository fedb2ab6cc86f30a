"""Helpers of the apps' evaluation loops."""
from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader


def dataset_cache(loader: DataLoader, attribute: str) -> dict[Any, Any]:
    """A dict kept on the loader's dataset as `attribute` (fresh per dataset), for scores that never change
    (a baseline's); a dataset that takes no attributes gets a throwaway dict (no caching)."""
    dataset = loader.dataset
    cache = getattr(dataset, attribute, None)
    if cache is None:
        cache = {}
        try:
            setattr(dataset, attribute, cache)
        except AttributeError:
            pass
    return cache
