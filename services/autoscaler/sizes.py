"""Model weight sizes from their safetensors headers (the weights themselves are not read)."""

from __future__ import annotations

import logging

from shared.catalog import Catalog
from shared.model_store import ModelStoreError, read_checkpoint_headers

log = logging.getLogger("tokenpool.autoscaler")


def model_sizes(catalog: Catalog) -> dict[str, int]:
    """Bytes of weights per catalog model; a model whose checkpoint cannot be read is left out
    (no worker could load it either) with a warning that says why."""
    sizes = {}
    for entry in catalog.models:
        try:
            sizes[entry.name] = sum(t.nbytes for t in read_checkpoint_headers(entry.path).values())
        except (ModelStoreError, OSError) as e:
            log.warning("model %s is left out of the placement: %s (run `tokenpool models prepare`?)", entry.name, e)
    return sizes
