"""The item retrieval index as a Kedro dataset: a faiss file and its JSON config beside it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from twotower_pipeline.evaluation.index import MISSING_FAISS, IndexConfig, ItemIndex, faiss_module
from twotower_pipeline.io.datasets import replace_atomically


def _sha256(path: Path) -> str:
    with Path(path).open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class ItemIndexDataset(AbstractDataset[ItemIndex, ItemIndex]):
    """An `ItemIndex` stored as `filepath` (faiss.write_index) and `filepath`.json (its config).

    Each file is written to a temporary name and renamed over the target, the
    index first, so a failed save leaves the previous index and config intact.
    The config records the index file's SHA-256: an index and a config from two
    different runs (one restored by a rollback, the other not) are refused on
    load rather than searched with the wrong settings. An index skipped for
    want of faiss is stored as its config alone.
    """

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self._config_path = self._filepath.with_suffix(".json")
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "config": str(self._config_path)}

    def save(self, data: ItemIndex) -> None:
        description = data.describe()
        if data.index is not None:
            faiss = faiss_module()

            def write(tmp: str) -> None:
                faiss.write_index(data.index, str(tmp))
                description["sha256"] = _sha256(tmp)

            replace_atomically(self._filepath, write)
        elif self._filepath.exists():
            # A config saying "skipped" must not sit beside an older run's index.
            self._filepath.unlink()
        text = json.dumps(description, indent=2)
        replace_atomically(self._config_path, lambda tmp: Path(tmp).write_text(text))

    def load(self) -> ItemIndex:
        if not self._config_path.exists():
            raise DatasetError(f"no index config at {self._config_path}: build the index first")
        described = json.loads(self._config_path.read_text())
        config = IndexConfig(**described["config"])
        n_items, dim = int(described["n_items"]), int(described["dim"])
        if described.get("skipped"):
            return ItemIndex(None, config, n_items, dim, skipped=described["skipped"])
        faiss = faiss_module()
        if faiss is None:
            return ItemIndex(None, config, n_items, dim, skipped=MISSING_FAISS)
        if not self._filepath.exists():
            raise DatasetError(
                f"{self._config_path} describes an index but {self._filepath} is missing: "
                "build the index again"
            )
        if _sha256(self._filepath) != described.get("sha256"):
            raise DatasetError(
                f"{self._filepath} is not the index {self._config_path} describes (its SHA-256 "
                "differs: one of the two was restored or replaced): build the index again"
            )
        index = faiss.read_index(str(self._filepath))
        # efSearch / nprobe are search-time settings: set them from the config.
        if config.kind == "hnsw":
            faiss.downcast_index(index).hnsw.efSearch = config.hnsw_ef_search
        else:
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = min(config.ivf_nprobe, ivf.nlist)
        return ItemIndex(index, config, n_items, dim)

    def _exists(self) -> bool:
        return self._config_path.exists()
