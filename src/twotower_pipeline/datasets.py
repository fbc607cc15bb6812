"""Custom Kedro datasets used by the catalog."""

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
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, then rename: a reader never sees half a file.
        handle, tmp_name = tempfile.mkstemp(dir=self._filepath.parent, suffix=".tmp")
        os.close(handle)
        try:
            pq.write_table(table, tmp_name)
            os.replace(tmp_name, self._filepath)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)

    def preview(self, nrows: int = 5) -> dict:
        """Rows for kedro-viz's table preview."""
        frame = self.load().head(nrows)
        return {
            "index": list(range(len(frame))),
            "columns": list(frame.columns),
            "data": frame.values.tolist(),
        }
