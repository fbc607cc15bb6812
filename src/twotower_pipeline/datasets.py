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

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io import AbstractDataset, DatasetError
from kedro.io.core import get_filepath_str
from kedro_datasets._typing import TablePreview
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import ParquetDataset

from twotower_pipeline.synthetic import SyntheticLogSpec, generate_interactions

_SPEC_KEY = b"twotower_pipeline.synthetic_spec"


class SyntheticInteractionsDataset(AbstractDataset[None, pd.DataFrame]):
    """The embedded default interaction log: generated from a seed, kept as Parquet.

    On first load the log is generated and written to ``filepath``; later
    loads read the file, unless the spec stored in it differs from the one in
    the catalog, in which case the file is generated anew. The dataset is
    read-only: it is raw data.
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

    def _stored_spec(self) -> bytes | None:
        if not self._filepath.exists():
            return None
        schema_metadata = pq.read_schema(self._filepath).metadata or {}
        return schema_metadata.get(_SPEC_KEY)

    def load(self) -> pd.DataFrame:
        if self._stored_spec() != self._spec_json():
            self._write(generate_interactions(self._spec))
        return pd.read_parquet(self._filepath)

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._filepath} is generated raw data and is read-only")

    def _exists(self) -> bool:
        # Generated on demand, so it can always be loaded.
        return True

    def _write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), _SPEC_KEY: self._spec_json()}
        )
        # A reader never sees half a file.
        _replace_atomically(self._filepath, lambda tmp: pq.write_table(table, tmp))

    def preview(self, nrows: int = 5) -> TablePreview:
        """Rows for kedro-viz's table preview (it picks the widget from the annotation)."""
        return TablePreview(self.load().head(nrows).to_dict(orient="split"))


def _replace_atomically(target: Path, write: Any) -> None:
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

    def save(self, data: pd.DataFrame) -> None:
        if self._protocol != "file" or "partition_cols" in self._save_args:
            super().save(data)
            return
        target = Path(get_filepath_str(self._get_save_path(), self._protocol))
        _replace_atomically(target, lambda tmp: data.to_parquet(tmp, **self._save_args))
        self._invalidate_cache()


class AtomicJSONDataset(JSONDataset):
    """json.JSONDataset whose local saves replace the file whole or not at all."""

    def save(self, data: Any) -> None:
        if self._protocol != "file":
            super().save(data)
            return
        text = json.dumps(data, **self._save_args)  # fails before any file is touched
        target = Path(get_filepath_str(self._get_save_path(), self._protocol))
        _replace_atomically(target, lambda tmp: Path(tmp).write_text(text))
        self._invalidate_cache()
