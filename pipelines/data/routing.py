"""Read a local source file in bounded batches and route its rows into one scratch file per UTC date.

The first half of landing (:mod:`pipelines.data.landing` publishes the result): :func:`split_csv`
and :func:`split_parquet` stream a CSV (plain or gzip) or Parquet source, write every row
*unchanged* into ``<scratch>/dt=D.csv.zst`` (zstd-compressed CSV text; ``.parquet``) by its UTC
event date, and collect the rows that cannot be placed in :class:`SplitStats` with a reason
(``wrong_column_count``, ``unclosed_quote``, ``unexpected_header``, ``malformed_row``, ``unparseable_timestamp``,
``implausible_timestamp``, ``outside_window`` when a window is given).
With ``IM_PSEUDONYMIZE`` on, the user id of every row is replaced by its pseudonym
(:mod:`pipelines.privacy.pseudonym`) before anything is written, set-aside rows included; a row
whose columns cannot be told apart keeps no text at all.
A file that cannot be read at all (empty, corrupt gzip, wrong columns) raises
:class:`~pipelines.data.formats.SourceError` naming the file and the rule. No storage here.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipelines.config import load_settings
from pipelines.data.canonical import parse_ts, plausible_bounds_us
from pipelines.data.fanout import Background
from pipelines.data.formats import BATCH_BYTES, SourceError, SourceSpec, valid_encoding
from pipelines.data.sourcefile import (
    LONG_LINE_BYTES,
    PARQUET_MAGIC,
    as_utf8,
    check_parquet_columns,
    has_malformed_quotes,
    header_columns,
    is_header_row,
    open_stream,
    read_preamble,
    scan_file,
    split_line,
    without_lines,
)
from pipelines.platform import layout
from pipelines.privacy.pseudonym import Pseudonymizer, active

PARQUET_BATCH_ROWS = 500_000
RAW_CODEC = "zstd"  # of landed CSV text (level 1: about 4x smaller, compressed at ~400 MB/s)
MAX_OPEN_WRITERS = 256  # day files kept open at once; older ones are closed and reopened for appending
WRITE_BEHIND_BYTES = 64 << 20  # rows routed but not yet written to the day files, at most
REJECT_SCHEMA = pa.schema([("reason", pa.string()), ("raw", pa.string()), ("detail", pa.string()),
                           ("line", pa.int64())])

Writer = Callable[[dt.date, pa.Table], None]
FROM_SETTINGS = "from-settings"  # pseudonymize= default: IM_PSEUDONYMIZE / IM_PSEUDONYM_KEY_FILE of the environment


def _pseudonymizer(choice: Pseudonymizer | str | None) -> Pseudonymizer | None:
    """The pseudonymizer a split uses: the one given, none, or (by default) the environment's settings."""
    if isinstance(choice, str):
        return active(load_settings())
    return choice


def _withheld(text: str, delimiter: str) -> str:
    """What a set-aside row keeps of its text under pseudonymisation when its user id cannot be located."""
    return f"[withheld under pseudonymisation: {len(split_line(text.encode(), delimiter))} fields, {len(text)} chars]"


@dataclass
class SplitStats:
    """What routing one source did: scratch file per date, rows per date, and the rows set aside."""

    columns: list[str]
    suffix: str  # ".csv.zst" or ".parquet": the raw files keep the source's format
    rows_read: int = 0
    rows_by_date: dict[dt.date, int] = field(default_factory=dict)
    files: dict[dt.date, Path] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    _single: list[dict[str, Any]] = field(default_factory=list)
    _tables: list[pa.Table] = field(default_factory=list)

    def reject(self, reason: str, raw: str, detail: str = "", line: int | None = None) -> None:
        """Set one row aside."""
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self._single.append({"reason": reason, "raw": raw, "detail": detail, "line": line})

    def reject_many(self, reason: str, raw: pa.Array, detail: pa.Array) -> None:
        """Set many rows aside at once (``raw`` and ``detail``: string arrays of equal length)."""
        if len(raw):
            self.reasons[reason] = self.reasons.get(reason, 0) + len(raw)
            self._tables.append(pa.table({"reason": pa.array([reason] * len(raw), pa.string()), "raw": raw,
                                          "detail": detail, "line": pa.nulls(len(raw), pa.int64())}))

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    def rejects(self) -> pa.Table:
        """Every row set aside: ``reason``, ``raw`` (the row text), ``detail``, ``line`` (when known)."""
        single = pa.Table.from_pylist(self._single, schema=REJECT_SCHEMA)
        return pa.concat_tables([single, *(t.cast(REJECT_SCHEMA) for t in self._tables)])


# --- the file itself -----------------------------------------------------------------------------


# --- routing rows by date ------------------------------------------------------------------------


def _as_text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as text; lists and structs (a Parquet source may hold them) as JSON."""
    if pa.types.is_nested(column.type):
        return pa.array([None if v is None else json.dumps(v, default=str) for v in column.to_pylist()], pa.string())
    return pc.cast(column, pa.string())


def _raw_text(table: pa.Table, spec: SourceSpec) -> pa.Array:
    """Each row's text: its fields joined by the delimiter (vectorised)."""
    cols = [pc.fill_null(_as_text(table[c]), "") for c in table.column_names]
    if not cols:
        return pa.array([""] * table.num_rows, pa.string())
    joined = pc.binary_join_element_wise(*cols, spec.delimiter)
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def _ts_detail(table: pa.Table, spec: SourceSpec, suffix: str) -> pa.Array:
    """``<ts column>='<text>' <suffix>`` per row (the detail of a timestamp reason)."""
    text = pc.fill_null(pc.cast(table[spec.column_map["ts"]], pa.string()), "")
    return pc.binary_join_element_wise(f"{spec.column_map['ts']}='", text, f"' {suffix}", "")


def _set_aside(stats: SplitStats, reason: str, table: pa.Table, spec: SourceSpec, mask: pa.Array,
               suffix: str) -> None:
    if pc.any(mask).as_py():
        rows = table.filter(mask)
        stats.reject_many(reason, _raw_text(rows, spec), _ts_detail(rows, spec, suffix))


def _route(batch: pa.RecordBatch | pa.Table, spec: SourceSpec, stats: SplitStats, now: dt.datetime,
           write: Writer, *, window: tuple[int | None, int | None] = (None, None), check_fields: bool = True,
           pseudonyms: Pseudonymizer | None = None) -> None:
    """Split one batch by UTC event date. Rows whose date cannot be read, is implausible or lies
    outside ``window`` (UTC microseconds, None = open) are set aside with a reason; so are Taobao rows
    with a field holding a delimiter, quote or line break (``check_fields``: the file may hold one).
    With ``pseudonyms``, the user id column is replaced by pseudonyms once the rules have looked at
    the rows, before any row is written or set aside."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    stats.rows_read += table.num_rows
    ts = parse_ts(table[spec.column_map["ts"]], spec.ts_format, spec.timezone)
    lo, hi = plausible_bounds_us(now)
    unreadable = pc.is_null(ts)
    implausible = pc.fill_null(pc.or_(pc.less(ts, lo), pc.greater_equal(ts, hi)), False)
    bad = pc.or_(unreadable, implausible)
    outside = None
    w_lo, w_hi = window
    if w_lo is not None or w_hi is not None:
        out_mask = pc.or_(pc.less(ts, w_lo if w_lo is not None else lo),
                          pc.greater_equal(ts, w_hi if w_hi is not None else hi))
        outside = pc.and_(pc.fill_null(out_mask, False), pc.invert(bad))
        bad = pc.or_(bad, outside)
    mangled = None
    if spec.needs_plain_fields and check_fields:
        # Official Taobao rows never hold a delimiter or quote; one that does was mangled upstream.
        mangled = pa.array([False] * table.num_rows)
        for c in table.column_names:
            col = pc.cast(table[c], pa.string())
            mangled = pc.or_(mangled, pc.fill_null(pc.match_substring_regex(col, r"[\",\r\n]"), False))
        mangled = pc.and_(mangled, pc.invert(bad))
    if pseudonyms is not None:
        table = pseudonyms.table(table, spec.column_map["user_id"], spec.id_pattern)
    if mangled is not None:
        if pc.any(mangled).as_py():
            rows = table.filter(mangled)
            stats.reject_many("malformed_row", _raw_text(rows, spec),
                              pa.array(["a field holds a delimiter, quote or line break"] * rows.num_rows))
            bad = pc.or_(bad, mangled)
    if pc.any(bad).as_py():
        fmt = f"({spec.ts_format})"
        _set_aside(stats, "unparseable_timestamp", table, spec, unreadable, fmt)
        _set_aside(stats, "implausible_timestamp", table, spec, implausible, fmt)
        if outside is not None:
            _set_aside(stats, "outside_window", table, spec, outside, f"{fmt} outside the configured window")
        keep = pc.invert(bad)
        table = table.filter(keep)
        ts = ts.filter(keep)
    if table.num_rows == 0:
        return
    days = np.floor_divide(ts.to_numpy(zero_copy_only=False), 86_400_000_000)
    first = int(days.min())
    offsets = days - first
    if not offsets.any():  # one day (a daily drop): nothing to sort
        day = dt.date(1970, 1, 1) + dt.timedelta(days=first)
        write(day, table)
        stats.rows_by_date[day] = stats.rows_by_date.get(day, 0) + table.num_rows
        return
    # A stable sort of small integers is a radix sort in NumPy: the rows of each day keep their order.
    offsets = offsets.astype(np.int16) if int(offsets.max()) < 2**15 else offsets
    order = np.argsort(offsets, kind="stable")
    sorted_days = offsets[order]
    table = table.take(pa.array(order))
    cuts = np.flatnonzero(np.diff(sorted_days)) + 1
    bounds = np.r_[0, cuts, len(sorted_days)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        day = dt.date(1970, 1, 1) + dt.timedelta(days=first + int(sorted_days[a]))
        write(day, table.slice(int(a), int(b - a)))
        stats.rows_by_date[day] = stats.rows_by_date.get(day, 0) + int(b - a)


def _flush_invalid(pending: list[tuple[str, int, int]], stats: SplitStats, withhold_delimiter: str | None = None) -> None:
    """Set aside the rows the CSV reader could not split into the expected columns (with
    ``withhold_delimiter``, pseudonymisation is on: such a row's text is withheld, since which of its
    fields is the user id is unknown). A row cut from a longer text by :func:`_cut_unclosed_quotes`
    has ``actual`` -1 and is set aside as ``unclosed_quote``."""
    for text, expected, actual in pending:
        stats.rows_read += 1
        raw = text if withhold_delimiter is None else _withheld(text, withhold_delimiter)
        if actual < 0:
            stats.reject("unclosed_quote", raw, "a quote (\") opens a field and no quote closes it on this line; "
                         "the lines after it were read again as rows")
        else:
            stats.reject("wrong_column_count", raw, f"{actual} columns, expected {expected}")
    pending.clear()


def _cut_unclosed_quotes(pending: list[tuple[str, int, int]]) -> list[str]:
    """The lines that rows of ``pending`` swallowed, cut off them.

    Rows are read with ``newlines_in_values=False``, yet a quote that opens a field and is never
    closed makes Arrow's parser read on over the line ends to the end of the file: in a file of one
    read block (16 MiB) every row after it became part of one invalid row. (In a larger file the
    reader stops with "out of sync with chunker", and the error names the open quote.) Each such
    row keeps its first line (then set aside as ``unclosed_quote``, as is a row of one line with an
    odd number of quotes); the lines after it are returned, to be read as rows again."""
    rest: list[str] = []
    for i, (text, expected, _actual) in enumerate(pending):
        first, newline, after = text.partition("\n")
        if newline or first.count('"') % 2:  # (a quote left open on the last line it could swallow)
            pending[i] = (first.removesuffix("\r"), expected, -1)
            if after.strip("\r\n"):
                rest.append(after)
    return rest


class _CsvDayFiles:
    """One zstd-compressed CSV scratch file per day, at most :data:`MAX_OPEN_WRITERS` open at once (a
    file of thousands of days would otherwise hold thousands of open files): the least recently used
    is closed and reopened for appending (a second zstd frame; readers read frames one after
    another), without a second header.

    Written behind: :meth:`write` hands the rows to one writer thread (in order, at most
    :data:`WRITE_BEHIND_BYTES` waiting), which formats and compresses them while the caller parses
    and routes the next batch; :meth:`close` waits for it and raises its first error."""

    def __init__(self, scratch: Path, spec: SourceSpec, schema: pa.Schema, stats: SplitStats) -> None:
        self.scratch, self.spec, self.schema, self.stats = scratch, spec, schema, stats
        self.open: OrderedDict[dt.date, tuple[pa.OSFile, pa.CompressedOutputStream, pacsv.CSVWriter]] = OrderedDict()
        self._behind = Background(threads=1, budget=WRITE_BEHIND_BYTES)

    def write(self, day: dt.date, part: pa.Table) -> None:
        new = day not in self.stats.files
        if new:
            self.stats.files[day] = self.scratch / f"dt={day.isoformat()}{layout.RAW_CSV}"
        self._behind.submit(self._write, day, part, new, weight=part.nbytes)

    def _write(self, day: dt.date, part: pa.Table, new: bool) -> None:
        handle = self.open.pop(day, None)
        if handle is None:
            if len(self.open) >= MAX_OPEN_WRITERS:
                _close(self.open.popitem(last=False)[1])
            sink = pa.OSFile(str(self.stats.files[day]), "wb" if new else "ab")
            packed = pa.CompressedOutputStream(sink, RAW_CODEC)
            handle = (sink, packed, pacsv.CSVWriter(packed, self.schema, write_options=pacsv.WriteOptions(
                include_header=self.spec.has_header and new,
                quoting_style="none" if self.spec.needs_plain_fields else "needed", delimiter=self.spec.delimiter)))
        self.open[day] = handle
        handle[2].write_table(part.cast(self.schema))

    def close(self) -> None:
        try:
            self._behind.wait()
        finally:
            self._behind.close()
            while self.open:
                _close(self.open.popitem()[1])


def _close(handle: tuple[pa.OSFile, pa.CompressedOutputStream, pacsv.CSVWriter]) -> None:
    for part in reversed(handle):
        part.close()


def split_csv(path: Path, spec: SourceSpec, scratch: Path, now: dt.datetime, *,
              window: tuple[int | None, int | None] = (None, None),
              pseudonymize: Pseudonymizer | str | None = FROM_SETTINGS) -> SplitStats:
    """Route the rows of a CSV source (plain, gzip or zstd) into ``scratch/dt=D.csv.zst`` files, unchanged
    but for pseudonymised user ids (``pseudonymize``: a :class:`Pseudonymizer`, None for off, or by
    default the environment's settings); rows outside ``window`` (UTC microseconds, None = open) are
    set aside as ``outside_window``. Comment lines above the first row are set aside as
    ``comment_line``, rows whose bytes are not in the file's encoding as ``invalid_encoding`` and
    lines longer than half a read block as ``line_too_long``."""
    valid_encoding(spec.encoding)
    pseudonyms = _pseudonymizer(pseudonymize)
    # One pass over the bytes: a corrupt gzip fails before anything is landed, a file without any
    # quote character cannot hold a mangled Taobao row (so the per-field check is skipped), and a
    # line longer than Arrow's read block is found before the reader cuts it into rows.
    scan = scan_file(path)
    # A quoted field closed and then continued ("ab"cd") is read leniently by Arrow (abcd"): such
    # lines are set aside whole, with their line numbers, before the reader sees them.
    malformed = scan.has_quote and has_malformed_quotes(path, spec.delimiter, spec.encoding)
    if scan.longest_line <= LONG_LINE_BYTES and not malformed:
        return _split_csv_once(path, spec, scratch, now, window, pseudonyms, scan.has_quote)
    preamble = read_preamble(path, spec.encoding)
    copy = scratch / ".without-set-aside-lines.csv"
    dropped = without_lines(path, copy, quotes_of=spec.delimiter if malformed else None,
                            keep_first=preamble.lines_before + (1 if spec.has_header else 0))
    try:
        stats = _split_csv_once(copy, spec, scratch, now, window, pseudonyms, scan.has_quote, source_name=path)
    finally:
        copy.unlink(missing_ok=True)
    for line, shown, length, reason in dropped:
        stats.rows_read += 1
        text = shown if pseudonyms is None else _withheld(shown, spec.delimiter)
        if reason == "line_too_long":
            detail = f"{length} bytes > {LONG_LINE_BYTES} (first {len(shown)} characters kept)"
        else:
            detail = ('a field opens with a quote, closes it and goes on ("ab"cd"); a quote inside a quoted '
                      'field is written twice ("ab""cd")')
        stats.reject(reason, text, detail, line=line)
    return stats


def _split_csv_once(path: Path, spec: SourceSpec, scratch: Path, now: dt.datetime,
                    window: tuple[int | None, int | None], pseudonyms: Pseudonymizer | None, has_quote: bool, *,
                    source_name: Path | None = None) -> SplitStats:
    name = source_name or path
    withhold = spec.delimiter if pseudonyms is not None else None
    check_fields = has_quote
    preamble = read_preamble(path, spec.encoding)
    columns, skip_header = header_columns(name, spec, preamble)
    stats = SplitStats(columns=columns, suffix=layout.RAW_CSV)
    for line, text in preamble.comments:
        stats.rows_read += 1
        stats.reject("comment_line", text if withhold is None else _withheld(text, withhold),
                     "a comment line above the rows", line=line)
    pending_invalid: list[tuple[str, int, int]] = []

    def on_invalid(row: Any) -> str:
        pending_invalid.append((row.text, row.expected_columns, row.actual_columns))
        return "skip"

    day_files = _CsvDayFiles(scratch, spec, pa.schema([(c, pa.string()) for c in columns]), stats)
    utf8 = valid_encoding(spec.encoding) == "utf-8"
    parse = pacsv.ParseOptions(delimiter=spec.delimiter, invalid_row_handler=on_invalid, newlines_in_values=False)
    # Bytes first: a row that is not UTF-8 is set aside, not the whole file refused.
    convert = pacsv.ConvertOptions(column_types={c: pa.binary() for c in columns}, strings_can_be_null=False,
                                   quoted_strings_can_be_null=False)
    try:
        reader = pacsv.open_csv(
            open_stream(path),  # plain, gzip or zstd by the magic number, not by the name
            read_options=pacsv.ReadOptions(column_names=columns, block_size=BATCH_BYTES,
                                           skip_rows=preamble.lines_before + (1 if skip_header else 0),
                                           encoding="utf8" if utf8 else spec.encoding),
            parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as exc:
        # (a header without a line end after it: Arrow cannot skip the header line it has not ended)
        if "Empty CSV file" in str(exc) or (skip_header and "Could not skip initial" in str(exc)):
            raise SourceError(f"{name}: no data rows after the header: nothing to land") from exc
        raise SourceError(f"{name}: unreadable as {spec.fmt} CSV: {exc}") from exc

    def as_text(batch: pa.RecordBatch | pa.Table) -> pa.Table:
        """The batch as strings, its rows that are not text in the file's encoding set aside."""
        table, not_text = as_utf8(batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]))
        if not_text is not None:
            _set_aside_encoding(stats, table, not_text, spec, withhold)
            table = table.filter(pa.array(~not_text))
        return table

    def open_in_last_column(table: pa.Table) -> pa.Table:
        """``table`` without its rows whose last field holds a line break where none can be: a quote
        opened in the last column swallows every line after it into that field (and the row still has
        its column count). In a Taobao file no field holds a line break; elsewhere such a row counts
        only when its timestamp does not read. Those rows go to the unclosed-quote path (their first
        line set aside, the lines after it read again)."""
        last = table.column_names[-1] if table.num_rows and has_quote else None
        if last is None:
            return table
        broken = pc.fill_null(pc.match_substring(table[last], "\n"), False)
        if not pc.any(broken).as_py():
            return table
        # Lines swallowed by an open quote are rows: a delimiter after the line break. A value
        # quoted and closed on the next line ("15116\n67930") has none: it stays one row, which
        # the rules judge like any other (its timestamp does not read).
        delimiter = "\\" + spec.delimiter if spec.delimiter in "]\\^-" else spec.delimiter
        swallowed = pc.fill_null(pc.match_substring_regex(table[last], f"(?s)\n.*[{delimiter}]"), False)
        broken = pc.and_(broken, swallowed)
        if not pc.any(broken).as_py():
            return table
        if not spec.needs_plain_fields:
            broken = pc.and_(broken, pc.is_null(parse_ts(table[spec.column_map["ts"]], spec.ts_format, spec.timezone)))
        rows = table.filter(broken)
        texts = [spec.delimiter.join(row) for row in zip(*(rows[c].to_pylist() for c in rows.column_names),
                                                          strict=True)]
        pending_invalid.extend((text, len(columns), len(columns)) for text in texts)
        return table.filter(pc.invert(broken))

    def flush() -> None:
        # The lines a row with an unclosed quote swallowed are read again (they may hold another one).
        while swallowed := _cut_unclosed_quotes(pending_invalid):
            for text in swallowed:
                again = pacsv.read_csv(pa.py_buffer(text.encode()), parse_options=parse, convert_options=convert,
                                       read_options=pacsv.ReadOptions(column_names=columns, block_size=BATCH_BYTES))
                _route(open_in_last_column(as_text(again)), spec, stats, now, day_files.write, window=window,
                       check_fields=check_fields, pseudonyms=pseudonyms)
        _flush_invalid(pending_invalid, stats, withhold)

    first = True
    try:
        for batch in reader:
            table = as_text(batch)
            if first and not spec.has_header and table.num_rows:
                first = False
                head = [table[c][0].as_py() for c in columns]
                if is_header_row(head, spec):
                    stats.rows_read += 1
                    text = spec.delimiter.join(head)
                    stats.reject("unexpected_header", text if withhold is None else _withheld(text, withhold),
                                 "a header line where the format has none", line=preamble.lines_before + 1)
                    table = table.slice(1)
            _route(open_in_last_column(table), spec, stats, now, day_files.write, window=window,
                   check_fields=check_fields, pseudonyms=pseudonyms)
            flush()
        flush()
    except pa.ArrowInvalid as exc:
        if "out of sync with chunker" in str(exc):  # a quote left open runs over a read block's end
            raise SourceError(f"{name}: a quote (\") opens a field that no quote closes, somewhere after the first "
                              f"{stats.rows_read} rows (Arrow's reader: {exc}); remove or close that quote and land "
                              "the file again") from exc
        raise SourceError(f"{name}: unreadable as {spec.fmt} CSV after {stats.rows_read} rows: {exc}") from exc
    finally:
        day_files.close()
    return stats


def _set_aside_encoding(stats: SplitStats, table: pa.Table, mask: np.ndarray, spec: SourceSpec,
                        withhold: str | None, hint: str | None = None) -> None:
    rows = table.filter(pa.array(mask))
    stats.rows_read += rows.num_rows
    texts = _raw_text(rows, spec).to_pylist()
    hint = hint or (f"bytes that are not {spec.encoding} (shown as U+FFFD); if the file is in another encoding, "
                    "land it with --encoding (e.g. latin-1, cp1252)")
    for text in texts:
        stats.reject("invalid_encoding", text if withhold is None else _withheld(text, withhold), hint)


def _parquet_batches(path: Path, pf: pq.ParquetFile) -> Iterator[pa.RecordBatch]:
    """The batches of ``pf``; a page that does not decode (damaged bytes inside the file: its footer
    read, a column chunk does not) raises :class:`SourceError` naming the file and the rows."""
    batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS)
    done = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceError(f"{path}: unreadable Parquet file: the data after its first {done} rows does not "
                              f"decode ({exc}): the file is damaged; export it again") from exc
        done += batch.num_rows
        yield batch


def split_parquet(path: Path, spec: SourceSpec, scratch: Path, now: dt.datetime, *,
                  window: tuple[int | None, int | None] = (None, None),
                  pseudonymize: Pseudonymizer | str | None = FROM_SETTINGS) -> SplitStats:
    """Route the rows of a Parquet source into ``scratch/dt=D.parquet`` files, unchanged but for
    pseudonymised user ids (see :func:`split_csv`); rows outside ``window`` are set aside as
    ``outside_window``."""
    pseudonyms = _pseudonymizer(pseudonymize)
    try:
        pf = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        with path.open("rb") as fh:
            head = fh.read(4096)
        text = head and not head.startswith(PARQUET_MAGIC) and b"\x00" not in head and (b"\n" in head or len(head) < 4096)
        hint = "; it starts with lines of text: is it a CSV file? (--format csv)" if text else ""
        packed = "gzip" if head.startswith(b"\x1f\x8b") else "zstd" if head.startswith(b"\x28\xb5\x2f\xfd") else None
        if packed:
            hint = (f"; it is {packed}-compressed: decompress it (Parquet compresses inside the file) and land "
                    "the Parquet file")
        raise SourceError(f"{path}: unreadable Parquet file: {exc}{hint}") from exc
    schema = pf.schema_arrow
    check_parquet_columns(path, schema, spec)
    if pf.metadata.num_rows == 0:
        raise SourceError(f"{path}: empty file (0 rows): nothing to land")
    if pseudonyms is not None:  # pseudonyms are strings, whatever the source's id type
        user = schema.get_field_index(spec.column_map["user_id"])
        schema = schema.set(user, pa.field(schema.field(user).name, pa.string()))
    stats = SplitStats(columns=list(schema.names), suffix=".parquet")
    writers: dict[dt.date, pq.ParquetWriter] = {}

    def write(day: dt.date, part: pa.Table) -> None:
        if day not in writers:
            target = scratch / f"dt={day.isoformat()}.parquet"
            stats.files[day] = target
            writers[day] = pq.ParquetWriter(str(target), schema, compression="zstd")
        writers[day].write_table(part)

    # Mapped binary columns are read as text: a value that is not UTF-8 is set aside at landing (as
    # in a CSV file), not left to fail every validation of its day.
    mapped = set(spec.column_map.values())
    binary = [f.name for f in pf.schema_arrow if f.name in mapped
              and (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) or pa.types.is_fixed_size_binary(f.type))]
    withhold = spec.delimiter if pseudonyms is not None else None
    try:
        for batch in _parquet_batches(path, pf):
            if binary:
                table = pa.Table.from_batches([batch])
                texts, not_text = as_utf8(table.select(binary))
                if not_text is not None:
                    shown = table
                    for name in binary:
                        shown = shown.set_column(shown.schema.get_field_index(name), name, texts[name])
                    _set_aside_encoding(stats, shown, not_text, spec, withhold,
                                        f"binary column(s) {binary} hold bytes that are not UTF-8 (shown as U+FFFD)")
                    batch = table.filter(pa.array(~not_text))
            _route(batch, spec, stats, now, write, window=window, pseudonyms=pseudonyms)
    finally:
        for w in writers.values():
            w.close()
    return stats
