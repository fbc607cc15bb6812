"""Custom Kedro datasets used by the catalog.

The Parquet and JSON datasets here are kedro-datasets' own, except that a
local save writes a temporary file beside the target and renames it over the
target only once it is complete. kedro-datasets opens the target for writing
first (truncating it) and then serialises into it, so a frame pyarrow cannot
convert, or a report json cannot encode, would destroy the previous run's
file and leave an empty or partial one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import get_filepath_str
from kedro_datasets._typing import TablePreview
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import ParquetDataset

from twotower_pipeline.data.synthetic import SyntheticLogSpec, generate_world

_SPEC_KEY = b"twotower_pipeline.synthetic_spec"
# Files written beside the log, named <log stem>_<suffix>.parquet (SyntheticWorld's tables).
SYNTHETIC_COMPANIONS = ("item_features", "user_features", "item_taste", "user_taste")


def synthetic_companion_path(log_filepath: str | Path, name: str) -> Path:
    """Return where the synthetic log at `log_filepath` keeps its companion table `name`."""
    log = Path(log_filepath)
    return log.with_name(f"{log.stem}_{name}.parquet")


class SyntheticInteractionsDataset(AbstractDataset[None, pd.DataFrame]):
    """The embedded default interaction log: generated from a seed, kept as Parquet.

    On first load the log is generated and written to ``filepath``, with its
    companion tables beside it (item and user features, and the generator's
    taste model for the oracle; see SYNTHETIC_COMPANIONS). Later loads read the
    file, unless the spec stored in it or in a companion differs from the one
    in the catalog, in which case all of them are generated anew. The dataset
    is read-only: it is raw data.
    """

    def __init__(
        self,
        *,
        filepath: str,
        spec: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._filepath = Path(filepath)
        self._spec = SyntheticLogSpec(**(spec or {}))
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "spec": asdict(self._spec)}

    def _spec_json(self) -> bytes:
        return json.dumps(asdict(self._spec), sort_keys=True).encode()

    def _paths(self) -> dict[str, Path]:
        companions = {n: synthetic_companion_path(self._filepath, n) for n in SYNTHETIC_COMPANIONS}
        return {**companions, "interactions": self._filepath}  # the log last: written last

    @staticmethod
    def _stored_spec(path: Path) -> bytes | None:
        if not path.exists():
            return None
        schema_metadata = pq.read_schema(path).metadata or {}
        return schema_metadata.get(_SPEC_KEY)

    def load(self) -> pd.DataFrame:
        wanted = self._spec_json()
        if any(self._stored_spec(path) != wanted for path in self._paths().values()):
            world = generate_world(self._spec)
            for name, path in self._paths().items():
                self._write(getattr(world, name), path)
        return pd.read_parquet(self._filepath)

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._filepath} is generated raw data and is read-only")

    def _exists(self) -> bool:
        # Generated on demand, so it can always be loaded.
        return True

    def _write(self, frame: pd.DataFrame, path: Path) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), _SPEC_KEY: self._spec_json()}
        )
        # A reader never sees half a file.
        replace_atomically(path, lambda tmp: pq.write_table(table, tmp))

    def preview(self, nrows: int = 5) -> TablePreview:
        """Rows for kedro-viz's table preview (it picks the widget from the annotation)."""
        return table_preview(self.load().head(nrows))


def table_preview(frame: pd.DataFrame) -> TablePreview:
    """Return a kedro-viz table preview of `frame`, list cells (genres, tokens) as JSON lists."""
    rows = frame.copy()
    for column in rows.select_dtypes(include="object").columns:
        # pyarrow reads list cells as numpy arrays, which kedro-viz cannot serialise.
        rows[column] = rows[column].map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)
    return TablePreview(rows.to_dict(orient="split"))


def replace_atomically(target: Path, write: Any) -> None:
    """Call write(temporary path) beside `target`, then rename it over `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp_name)
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


class AtomicParquetDataset(ParquetDataset):
    """pandas.ParquetDataset whose local saves replace the file whole or not at all."""

    def preview(self, nrows: int = 5) -> TablePreview:
        """Rows for kedro-viz's table preview, list cells as JSON lists."""
        return table_preview(pd.DataFrame(**super().preview(nrows)))

    def save(self, data: pd.DataFrame) -> None:
        if self._protocol != "file" or "partition_cols" in self._save_args:
            super().save(data)
            return
        target = Path(get_filepath_str(self._get_save_path(), self._protocol))
        replace_atomically(target, lambda tmp: data.to_parquet(tmp, **self._save_args))
        self._invalidate_cache()


class AtomicJSONDataset(JSONDataset):
    """json.JSONDataset whose local saves replace the file whole or not at all."""

    def save(self, data: Any) -> None:
        if self._protocol != "file":
            super().save(data)
            return
        text = json.dumps(data, **self._save_args)  # fails before any file is touched
        target = Path(get_filepath_str(self._get_save_path(), self._protocol))
        replace_atomically(target, lambda tmp: Path(tmp).write_text(text))
        self._invalidate_cache()


class OptionalDataset(AbstractDataset[None, Any]):
    """A raw dataset that may be absent: loads None when its file does not exist.

    Wraps any dataset config (``dataset:``) and always "exists", so a run does
    not stop for an optional input it will not use; the node that reads it
    decides, from its parameters, whether None is fine (``features.item: null``)
    or an error naming the file. Read-only, like all raw data.
    """

    def __init__(self, *, dataset: dict[str, Any], metadata: dict[str, Any] | None = None) -> None:
        self._dataset = AbstractDataset.from_config("dataset", dict(dataset))
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._dataset._describe()}

    def load(self) -> Any:
        return self._dataset.load() if self._dataset.exists() else None

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._dataset} is optional raw data and is read-only")

    def _exists(self) -> bool:
        return True

    def preview(self, nrows: int = 5) -> TablePreview:
        """Rows for kedro-viz's table preview (none when the file is absent)."""
        data = self.load()
        return table_preview(data.head(nrows) if isinstance(data, pd.DataFrame) else pd.DataFrame())
