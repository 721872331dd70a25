"""An encoded dataset: the one place that knows the layout of its folder.

The folder (``features/<dataset id>/`` in the bucket, or a local copy) holds, with the file names
of :mod:`pipelines.platform.layout`::

    <split>/part-NNNNN.parquet           examples of train / validation / test (EXAMPLE_SCHEMA)
    test_events/part-00000.parquet       every user's events of the test look-backs and horizons
    vocab.json  metadata.json  baseline_stats.json

:class:`EncodedData` is a dataset in memory (what :func:`pipelines.features.encoding.encode_events`
returns); :class:`Dataset` is one on local disk, written with :meth:`Dataset.write`, moved to and
from object storage with :meth:`Dataset.upload` / :meth:`Dataset.download` and read back split
by split. Training and evaluation always work on a local copy.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import Settings
from pipelines.contracts import EVENT_SCHEMA
from pipelines.features.asof import SPLITS
from pipelines.features.examples import EXAMPLE_SCHEMA, HIST_FEATURES, EncodingConfig
from pipelines.features.vocab import Vocab
from pipelines.platform import layout, storage

SHARD_ROWS = 50_000  # examples per Parquet part
_COMPRESSION = "zstd"


@dataclasses.dataclass(frozen=True)
class EncodedData:
    """An encoded window in memory: vocabulary, encoding config, as-of times and examples per
    split, the baselines' training statistics and the raw events of the test users."""

    vocab: Vocab
    config: EncodingConfig
    asof: dict[str, list[dt.datetime]]
    examples: dict[str, pa.Table]
    stats: dict[str, Any]
    test_events: pa.Table

    def counts(self) -> dict[str, int]:
        """Examples per split."""
        return {split: self.examples[split].num_rows for split in SPLITS}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset folder on local disk: its vocabulary, metadata and baseline statistics, and the
    files of each split."""

    root: Path
    vocab: Vocab
    metadata: dict[str, Any]
    stats: dict[str, Any]

    @property
    def config(self) -> EncodingConfig:
        return EncodingConfig(**self.metadata["config"])

    def n_examples(self, split: str) -> int:
        return int(self.metadata["examples"][split])

    def asof_times(self, split: str) -> list[str]:
        """The as-of times of ``split`` (ISO-8601 UTC strings, oldest first)."""
        return list(self.metadata["asof"][split])

    def files(self, split: str) -> list[Path]:
        """The Parquet parts of ``split``, in order."""
        paths: list[Path] = []
        while (path := self.root / layout.DATASET_SPLIT_PART.format(split=split, index=len(paths))).exists():
            paths.append(path)
        return paths

    def read_split(self, split: str) -> pa.Table:
        """All example rows of one split (small splits: validation, test)."""
        tables = [pq.read_table(p) for p in self.files(split)]
        return pa.concat_tables(tables) if tables else EXAMPLE_SCHEMA.empty_table()

    def read_test_event_table(self) -> pa.Table:
        """:meth:`read_test_events` as an Arrow table (EVENT_SCHEMA)."""
        return pq.read_table(self.root / layout.DATASET_TEST_EVENTS)

    def read_test_events(self) -> pd.DataFrame:
        """The events of the test period (every user, each test as-of time's look-back and
        horizon; EVENT_SCHEMA columns, ``ts`` UTC-aware) as pandas."""
        events = pq.read_table(self.root / layout.DATASET_TEST_EVENTS).to_pandas()
        events["ts"] = pd.to_datetime(events["ts"], utc=True)
        return events

    @classmethod
    def open(cls, root: Path) -> Dataset:
        """Open a local dataset folder written by :meth:`write` or :meth:`download`."""
        def read(name: str) -> Any:
            path = root / name
            if not path.exists():
                raise FileNotFoundError(f"dataset file {path} is missing")
            return json.loads(path.read_text())

        return cls(root, Vocab.from_dict(read(layout.DATASET_VOCAB)), read(layout.DATASET_METADATA),
                   read(layout.DATASET_BASELINE_STATS))

    @classmethod
    def write(cls, encoded: EncodedData, root: Path, *, window: tuple[dt.date, dt.date] | None = None) -> Dataset:
        """Write ``encoded`` to the local folder ``root`` and open it. ``window`` (the first and last
        day of the clean events encoded) is recorded in the metadata when given."""
        root.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            for index, shard in enumerate(_shards(encoded.examples[split], SHARD_ROWS)):
                _write_table(shard, root / layout.DATASET_SPLIT_PART.format(split=split, index=index))
        _write_table(encoded.test_events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA),
                     root / layout.DATASET_TEST_EVENTS)
        metadata: dict[str, Any] = {"config": encoded.config.to_dict()}
        if window is not None:
            metadata.update(data_start=window[0].isoformat(), data_end=window[1].isoformat())
        metadata.update(asof={s: [t.isoformat() for t in ts] for s, ts in encoded.asof.items()},
                        examples=encoded.counts(), n_categories=encoded.vocab.n_categories,
                        hist_features=list(HIST_FEATURES))
        _write_json(root / layout.DATASET_VOCAB, encoded.vocab.to_dict())
        _write_json(root / layout.DATASET_BASELINE_STATS, encoded.stats)
        _write_json(root / layout.DATASET_METADATA, metadata)
        return cls.open(root)

    def upload(self, settings: Settings, dataset_id: str) -> str:
        """Copy this folder to ``features/<dataset_id>/`` in the bucket, replacing what was there;
        returns the dataset URI (``s3://<bucket>/features/<id>/``)."""
        prefix = layout.dataset_prefix(dataset_id)
        storage.delete_prefix(settings, prefix)
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            storage.upload_file(settings, path, prefix + path.relative_to(self.root).as_posix())
        return storage.uri(settings, prefix)

    @classmethod
    def download(cls, settings: Settings, dataset_uri: str, dest: Path) -> Dataset:
        """Copy ``dataset_uri`` (``s3://bucket/features/<id>/``, any bucket of the configured
        endpoint) to the local folder ``dest`` and open it."""
        parsed = storage.S3Uri.parse(dataset_uri)
        if parsed.bucket != settings.bucket:
            settings = dataclasses.replace(settings, bucket=parsed.bucket)
        prefix = parsed.key if parsed.key.endswith("/") else parsed.key + "/"
        keys = storage.list_keys(settings, prefix)
        if not keys:
            raise FileNotFoundError(f"dataset {dataset_uri} holds no files")
        for key in keys:
            path = dest / key[len(prefix):]
            path.parent.mkdir(parents=True, exist_ok=True)
            storage.download_file(settings, key, path)
        return cls.open(dest)


def _shards(table: pa.Table, rows_per_shard: int) -> Iterator[pa.Table]:
    for offset in range(0, max(table.num_rows, 1), rows_per_shard):  # an empty split still gets part 0
        yield table.slice(offset, rows_per_shard)


def _write_table(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression=_COMPRESSION)


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
