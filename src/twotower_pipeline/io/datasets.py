"""Custom Kedro datasets used by the catalog.

The Parquet and JSON datasets here are kedro-datasets' own, except that a
local save writes a temporary file beside the target and renames it over the
target only once it is complete. kedro-datasets opens the target for writing
first (truncating it) and then serialises into it, so a frame pyarrow cannot
convert, or a report json cannot encode, would destroy the previous run's
file and leave an empty or partial one.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable
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

from twotower_pipeline.config.errors import DiskFullError, human_size
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

    def companion_paths(self) -> list[Path]:
        """Return the files this log writes beside itself on its first load."""
        return [synthetic_companion_path(self._filepath, n) for n in SYNTHETIC_COMPANIONS]

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


def replace_atomically(
    target: Path, write: Any, needed_bytes: Callable[[], int] | None = None
) -> None:
    """Call write(temporary path) beside `target`, then rename it over `target`.

    The temporary name is this process's own (pid and a random part), so two
    runs never write one file; it is created with the process's umask, like any
    file the run writes. A disk that fills up during the write raises
    DiskFullError naming `target` and the space the file needs
    (`needed_bytes()` when given, else at least what was written), and the
    temporary file is removed: the old file stays as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = str(target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))
    os.close(os.open(tmp_name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp_name)
        os.replace(tmp_name, target)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        written = os.path.getsize(tmp_name) if os.path.exists(tmp_name) else 0
        os.unlink(tmp_name)
        raise DiskFullError(describe_disk_full(target, written, needed_bytes)) from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def describe_disk_full(
    target: Path, written: int, needed_bytes: Callable[[], int] | None = None
) -> str:
    """Return the one line for a save of `target` that ran out of disk space."""
    needed = None
    if needed_bytes is not None:
        try:
            needed = needed_bytes()
        except Exception:  # noqa: BLE001 - the size is a courtesy; the disk is the error
            needed = None
    free = shutil.disk_usage(target.parent).free
    if needed is not None:
        size = f"it needs {human_size(needed)}"
    elif written:
        size = f"it needs more than the {human_size(written)} written before the disk filled"
    else:
        size = "it needs more than is free"
    return (
        f"no space left on the disk while writing {_shown(target)}: {size}, and "
        f"{human_size(free)} is free there; free some space (the previous file is unchanged) "
        "and run again"
    )


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


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
        replace_atomically(
            target,
            lambda tmp: data.to_parquet(tmp, **self._save_args),
            lambda: len(data.to_parquet(None, **self._save_args)),
        )
        self._invalidate_cache()


class AtomicJSONDataset(JSONDataset):
    """json.JSONDataset whose local saves replace the file whole or not at all."""

    def save(self, data: Any) -> None:
        if self._protocol != "file":
            super().save(data)
            return
        text = json.dumps(data, **self._save_args)  # fails before any file is touched
        target = Path(get_filepath_str(self._get_save_path(), self._protocol))
        replace_atomically(
            target, lambda tmp: Path(tmp).write_text(text), lambda: len(text.encode())
        )
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

    def file_exists(self) -> bool:
        """Return whether the wrapped dataset's file exists (this dataset always "exists")."""
        return self._dataset.exists()

    @property
    def filepath(self) -> str | None:
        """Return the wrapped dataset's file, or None when it has none."""
        filepath = getattr(self._dataset, "_filepath", None)
        return None if filepath is None else str(filepath)

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._dataset} is optional raw data and is read-only")

    def _exists(self) -> bool:
        return True

    def preview(self, nrows: int = 5) -> TablePreview:
        """Rows for kedro-viz's table preview (none when the file is absent)."""
        data = self.load()
        return table_preview(data.head(nrows) if isinstance(data, pd.DataFrame) else pd.DataFrame())
