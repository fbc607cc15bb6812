"""The embedded synthetic log, read by Spark: the raw data of `kedro run --env=spark`."""

from __future__ import annotations

from typing import Any

from kedro_datasets.spark import SparkDatasetV2

from twotower_pipeline.io.datasets import SyntheticInteractionsDataset


class SyntheticInteractionsSparkDataset(SparkDatasetV2):
    """spark.SparkDatasetV2 over the synthetic Parquet log, generated first if it is missing.

    The log is generated on the driver exactly as SyntheticInteractionsDataset
    does (it is small); your own data replaces this entry with a plain
    `spark.SparkDatasetV2` (README, "Data preparation on Spark").
    """

    def __init__(
        self,
        *,
        filepath: str,
        spec: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(filepath=filepath, file_format="parquet", metadata=metadata)
        self._synthetic = SyntheticInteractionsDataset(filepath=filepath, spec=spec)

    def _load(self):
        # Kedro calls _load for datasets that define it (SparkDatasetV2 does).
        self._synthetic.load()  # writes the file when it is missing or of another spec
        return super()._load()

    def companion_paths(self):
        """Return the files the synthetic log writes beside itself on its first load."""
        return self._synthetic.companion_paths()

    def _exists(self) -> bool:
        return True  # generated on demand
