"""A bounded least-recently-used cache of gallery images' vision features.

A gallery image picked as a reference skips the vision encoder when its features are
cached (or stored in the index, `GalleryIndex.vision_features`). Safe to use from several
threads; a miss computes outside the lock, so concurrent misses never wait on each other.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import torch


class FeatureCache:
    """image id -> (1, T, W) vision features, at most `size` entries."""

    def __init__(self, size: int = 256):
        self.size = size
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0  # lookups served from the cache
        self.misses = 0  # lookups that computed the features

    def get(self, image_id: str, compute: Callable[[], torch.Tensor], remember: bool = True) -> torch.Tensor:
        """The cached features of `image_id`, else `compute()`, kept unless `remember` is False (a whole
        benchmark being ranked leaves the cache to the users' queries)."""
        with self._lock:
            features = self._entries.get(image_id)
            if features is not None:
                self._entries.move_to_end(image_id)
                self.hits += 1
                return features
            self.misses += 1
        features = compute()
        if remember:
            with self._lock:
                self._entries[image_id] = features
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return features
