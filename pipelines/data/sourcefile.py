"""The bytes of a local source file before its rows are routed: the preamble, encoding and line length.

:mod:`pipelines.data.routing` reads sources through these helpers:

- :func:`read_preamble`: blank and ``#`` comment lines above the first header or data line
  (comment lines are set aside as ``comment_line``; an export tool's ``# exported ... by ops`` no
  longer refuses the file), and that first line.
- :func:`header_columns`: the source's column names from its first line (header or first row),
  refusing a file whose columns cannot be right.
- :func:`scan_file`: one pass over the (decompressed) bytes, so a corrupt gzip or zstd file fails
  before anything is landed; it also finds quotes and the longest line.
- :func:`compression_of`, :func:`open_binary`, :func:`open_stream`: a source is plain, gzip or
  zstd by its magic number, whatever its name says (a plain file named ``.gz`` lands as text).
- :func:`as_utf8`: CSV columns read as bytes, made text; rows whose bytes are not UTF-8 are marked
  (quarantined as ``invalid_encoding``) instead of refusing the whole file. A file in another
  encoding is landed with ``--encoding`` (``encoding:`` in a column-map file).
- :func:`without_lines`: a copy of the source without lines longer than a read block
  (quarantined as ``line_too_long``: Arrow's reader would cut such a line into rows) and, when
  :func:`has_malformed_quotes` finds any, lines holding a quoted field closed and continued
  (``"ab"cd"``, quarantined as ``malformed_quote``: Arrow would read it leniently as ``abcd"``).

A file that cannot be read at all raises :class:`~pipelines.data.formats.SourceError` naming it.
"""

from __future__ import annotations

import csv
import gzip
import io
import mmap
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import pyarrow as pa

from pipelines.data.formats import BATCH_BYTES, SourceError, SourceSpec, valid_encoding

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PARQUET_MAGIC = b"PAR1"
# Files that are certainly not delimited text, by their first four bytes: named in the error.
BINARY_MAGICS = {b"PK\x03\x04": "a ZIP archive (an Excel .xlsx workbook or a zipped file)",
                 b"\xd0\xcf\x11\xe0": "an old Excel .xls workbook (OLE2)", PARQUET_MAGIC: "a Parquet file",
                 b"BZh": "a bzip2 archive", b"\xfd7zX": "an xz archive", b"7z\xbc\xaf": "a 7-Zip archive"}
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
COMMENT = b"#"
LONG_LINE_BYTES = BATCH_BYTES // 2  # a line longer than this may straddle two read blocks
_SCAN_BYTES = 8 << 20
_SHOWN_CHARS = 200  # of a line too long to keep whole in the quarantine


@dataclass(frozen=True)
class Preamble:
    """What precedes the rows: the first header or data line, the physical lines before it, and
    the comment lines among them (1-based line number, text)."""

    first: bytes | None
    lines_before: int
    comments: list[tuple[int, str]] = field(default_factory=list)


def binary_kind(head: bytes) -> str | None:
    """What :data:`BINARY_MAGICS` says a file starting with ``head`` is; None for anything else."""
    return next((kind for magic, kind in BINARY_MAGICS.items() if head.startswith(magic)), None)


def _utf16_without_bom(line: bytes) -> str | None:
    """``"le"`` / ``"be"`` when ``line`` reads as UTF-16 text of ASCII characters without a byte-order
    mark (a 0 byte after, or before, every character); None otherwise."""
    head = line[:64]
    if len(head) < 8:
        return None
    if head[1::2].count(0) >= len(head) // 2 - 1 and head[0::2].count(0) == 0:
        return "le"
    if head[0::2].count(0) >= len(head) // 2 - 1 and head[1::2].count(0) == 0:
        return "be"
    return None


def compression_of(path: Path) -> str | None:
    """``"gzip"`` or ``"zstd"`` by the file's magic number, whatever its name says; None for plain bytes."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return "gzip" if head.startswith(GZIP_MAGIC) else "zstd" if head == ZSTD_MAGIC else None


def open_binary(path: Path) -> IO[bytes]:
    """The file's (decompressed) bytes, read line by line or in blocks (see :func:`compression_of`)."""
    compression = compression_of(path)
    if compression == "gzip":
        return gzip.open(path, "rb")
    if compression == "zstd":
        return io.BufferedReader(pa.input_stream(str(path), compression="zstd"))  # type: ignore[arg-type]
    return open(path, "rb")


def open_stream(path: Path) -> pa.NativeFile:
    """The file's (decompressed) bytes for Arrow's CSV reader (which would otherwise go by the name)."""
    return pa.input_stream(str(path), compression=compression_of(path))


def _unreadable(path: Path, exc: BaseException) -> SourceError:
    kind = compression_of(path) if path.is_file() else None
    return SourceError(f"{path}: unreadable file (corrupt or truncated {kind or 'file'}): {exc}")


_READ_ERRORS = (OSError, EOFError, zlib.error, pa.ArrowInvalid)


def read_preamble(path: Path, encoding: str = "utf-8") -> Preamble:
    """The :class:`Preamble` of ``path`` (a UTF-8 byte-order mark stripped); ``first`` is None for a
    file of blank and comment lines only. Raises :class:`SourceError` when it cannot be read."""
    comments: list[tuple[int, str]] = []
    utf8 = encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig")
    try:
        with open_binary(path) as fh:
            for number, raw in enumerate(fh):
                if number == 0 and (kind := binary_kind(raw)):
                    packed = compression_of(path)
                    if raw.startswith(PARQUET_MAGIC) and packed:
                        raise SourceError(f"{path}: is not a text file: it is a {packed}-compressed Parquet file; "
                                          f"decompress it (Parquet compresses inside the file) and land it with "
                                          "--format parquet")
                    raise SourceError(f"{path}: is not a text file: it starts like {kind}; "
                                      + ("land it with --format parquet" if raw.startswith(PARQUET_MAGIC) else
                                         "export or unpack it as CSV (or Parquet) and land that"))
                if number == 0 and utf8 and raw[:2] in UTF16_BOMS:  # (after decompression, like the rest)
                    raise SourceError(f"{path}: starts with a UTF-16 byte-order mark: the file is UTF-16, not "
                                      f"{encoding}; land it with --encoding utf-16 (encoding: utf-16 in a column-map "
                                      "file)")
                if number == 0 and utf8 and (order := _utf16_without_bom(raw)):
                    raise SourceError(f"{path}: every other byte of its first line is 0: the file is UTF-16 "
                                      f"without a byte-order mark, not {encoding}; land it with --encoding "
                                      f"utf-16-{order} (encoding: utf-16-{order} in a column-map file)")
                line = (raw.removeprefix(b"\xef\xbb\xbf") if number == 0 else raw).rstrip(b"\r\n")
                if line.lstrip().startswith(COMMENT):
                    comments.append((number + 1, line.decode(encoding, errors="replace")))
                elif line.strip():
                    if b"\r" in line:  # lines that end with a lone carriage return (classic Mac)
                        raise SourceError(f"{path}: its lines end with a lone carriage return (\\r), not \\n or "
                                          "\\r\\n: convert the line ends (e.g. tr '\\r' '\\n' < in > out) and land it again")
                    return Preamble(line, number, comments)
                if number > 10_000:
                    break
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    return Preamble(None, 0, comments)


@dataclass(frozen=True)
class Scan:
    """What one pass over a file's bytes found."""

    has_quote: bool  # without a quote no field of a CSV row can hold a delimiter, quote or line break
    longest_line: int  # bytes, line break excluded


def scan_file(path: Path, *, quote_char: bytes = b'"') -> Scan:
    """Read the whole (decompressed) file once: a corrupt gzip stream fails here, before anything is
    landed. Finds whether ``quote_char`` occurs and the longest line (NumPy over 8 MiB chunks, about
    1 s per GB: a line longer than Arrow's read block would otherwise be cut into rows)."""
    found, longest, run = False, 0, 0
    try:
        for chunk in _chunks(path):
            found = found or quote_char in chunk
            breaks = np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10)
            if len(breaks) == 0:
                run += len(chunk)
                continue
            gaps = np.diff(breaks)
            longest = max(longest, run + int(breaks[0]), int(gaps.max()) - 1 if len(gaps) else 0)
            run = len(chunk) - int(breaks[-1]) - 1
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    return Scan(found, max(longest, run))


def _chunks(path: Path) -> Iterator[bytes | memoryview]:
    with open(path, "rb") as raw:
        if compression_of(path) is None:  # a plain file: read in place, without copying it through Python
            if os.fstat(raw.fileno()).st_size == 0:
                return
            with mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                for start in range(0, len(mapped), _SCAN_BYTES):
                    yield mapped[start:start + _SCAN_BYTES]
            return
    with open_binary(path) as fh:
        while chunk := fh.read(_SCAN_BYTES):
            yield chunk


def header_columns(path: Path, spec: SourceSpec, preamble: Preamble) -> tuple[list[str], bool]:
    """The source's column names and whether the file's first line (after blank and comment lines)
    is a header to skip.

    Raises :class:`SourceError` for an empty file, a wrong column count, or missing/extra columns.
    """
    line = preamble.first
    if line is None:
        if preamble.comments:
            raise SourceError(f"{path}: only comment lines ({len(preamble.comments)}), no rows: nothing to land")
        raise SourceError(f"{path}: empty file (no rows): nothing to land")
    fields = split_line(line, spec.delimiter, spec.encoding)
    if spec.has_header:
        names = [f.strip() for f in fields]
        missing = sorted(set(spec.column_map.values()) - set(names))
        if missing:
            hint = _delimiter_hint("header", names, spec.delimiter, None)
            by_case = {n.lower(): n for n in names}
            cased = [f"{by_case[m.lower()]!r} for {m!r}" for m in missing if m.lower() in by_case]
            if cased and not hint:
                hint = f"; column names are case-sensitive: the header has {', '.join(cased)}"
            raise SourceError(f"{path}: missing column(s) {missing} in header {names} "
                              f"(format {spec.fmt}, rule: columns){hint}")
        duplicated = sorted({n for n in names if names.count(n) > 1 and n in spec.column_map.values()})
        if duplicated:
            raise SourceError(f"{path}: header names column(s) {duplicated} more than once (rule: columns)")
        if spec.columns is not None and sorted(names) != sorted(spec.columns):  # another order is read by name
            extra = [c for c in names if c not in spec.columns]
            raise SourceError(f"{path}: header {names} does not match the {spec.fmt} columns {spec.columns}"
                              + (f" (extra: {extra})" if extra else "") + " (rule: columns)")
        return _unique_names(names), True
    if spec.columns is None:
        raise SourceError(f"{path}: a headerless {spec.fmt} file needs 'source_columns' (the column names in "
                          "order) in the column-map file")
    if len(fields) != len(spec.columns):
        raise SourceError(f"{path}: first row has {len(fields)} columns, expected {len(spec.columns)} "
                          f"({','.join(spec.columns)}) for format {spec.fmt} (rule: column_count)"
                          + _delimiter_hint("rows", fields, spec.delimiter, len(spec.columns)))
    return list(spec.columns), False


def _unique_names(names: list[str]) -> list[str]:
    """Header names made unique for columns no map reads: an unnamed column is ``column_<position>``
    (1-based), a name given again is ``<name>_<position>`` (a spreadsheet export's empty trailing
    columns, two ``notes``). The raw file keeps its header line as it was."""
    taken = set(names)
    out: list[str] = []
    for position, name in enumerate(names, start=1):
        if name and name not in out:
            out.append(name)
            continue
        candidate = f"{name}_{position}" if name else f"column_{position}"
        while candidate in taken or candidate in out:
            candidate += "_"
        out.append(candidate)
    return out


_OTHER_DELIMITERS = ((";", "semicolon", "';'"), ("\t", "tab", "'\\t'"), ("|", "pipe", "'|'"), (",", "comma", "','"))


def _delimiter_hint(what: str, fields: list[str], delimiter: str, expected: int | None) -> str:
    """``"; the <what> look(s) tab-delimited: land it with --delimiter '\\t'"`` when ``fields`` is one
    field that another common delimiter splits (into ``expected`` fields, when given); else ""."""
    if len(fields) != 1:
        return ""
    verb = "looks" if what == "header" else "look"
    return next((f"; the {what} {verb} {name}-delimited: land it with --delimiter {shown}"
                 for sep, name, shown in _OTHER_DELIMITERS
                 if sep != delimiter and sep in fields[0]
                 and (expected is None or len(fields[0].split(sep)) == expected)), "")


def is_header_row(fields: list[str], spec: SourceSpec) -> bool:
    ts_index = (spec.columns or []).index(spec.column_map["ts"])
    lowered = [f.strip().lower() for f in fields]
    return lowered == [c.lower() for c in (spec.columns or [])] or not re.fullmatch(
        r"-?[0-9]+", fields[ts_index].strip()) and lowered[ts_index] in ("timestamp", "ts", "time")


def check_parquet_columns(path: Path, schema: pa.Schema, spec: SourceSpec) -> None:
    """Raise :class:`SourceError` when a mapped column of a Parquet source is missing, holds lists
    or structs, or (for an id) true/false values, and when two columns share a name."""
    twice = sorted({c for c in schema.names if schema.names.count(c) > 1})
    if twice:
        raise SourceError(f"{path}: more than one column is named {twice}: give each column its own name "
                          "(rule: columns)")
    missing = sorted(set(spec.column_map.values()) - set(schema.names))
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}; file has {schema.names} (rule: columns)")
    nested = [f"{c} ({schema.field(c).type})" for c in spec.column_map.values() if pa.types.is_nested(schema.field(c).type)]
    if nested:
        raise SourceError(f"{path}: column(s) {nested} hold lists or structs, but each mapped field needs one value "
                          "per row (rule: column_type)")
    flags = [f"{field} -> {spec.column_map[field]}" for field in ("user_id", "item_id", "category_id")
             if field in spec.column_map and pa.types.is_boolean(schema.field(spec.column_map[field]).type)]
    if flags:
        raise SourceError(f"{path}: id column(s) {flags} hold true/false values, not ids: check the column map "
                          "(rule: column_type)")


def split_line(line: bytes, delimiter: str, encoding: str = "utf-8") -> list[str]:
    """The fields of one CSV line (undecodable bytes replaced)."""
    return next(csv.reader([line.decode(encoding, errors="replace")], delimiter=delimiter))


def as_utf8(table: pa.Table) -> tuple[pa.Table, np.ndarray | None]:
    """Binary CSV columns as strings, and a mask of the rows holding bytes that are not UTF-8 (None
    when every row is valid: the common case costs one validating cast per column). Invalid bytes
    of a marked row read as U+FFFD in its text."""
    strings: dict[str, pa.Array] = {}
    bad: np.ndarray | None = None
    for name in table.column_names:
        column = table[name].combine_chunks()
        try:
            strings[name] = column.cast(pa.string())
            continue
        except (pa.ArrowInvalid, UnicodeDecodeError):
            pass
        bad = np.zeros(table.num_rows, bool) if bad is None else bad
        texts = []
        for i, value in enumerate(column.to_pylist()):
            try:
                texts.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                bad[i] = True
                texts.append(value.decode("utf-8", errors="replace"))
        strings[name] = pa.array(texts, pa.string())
    return pa.table(strings), bad


def malformed_quote_pattern(delimiter: str) -> re.Pattern[bytes]:
    """A field that opens with a quote, closes it, and goes on (``"ab"cd"``, ``"x"y``) on one line:
    Arrow's reader reads such a field leniently (``abcd"``), changing the value without a word."""
    d = delimiter.encode()
    in_class = b"\\" + d if delimiter in "]\\^-" else d
    return re.compile(rb'(?:^|' + re.escape(d) + rb')"(?:[^"\n]|"")*"[^' + in_class + rb'"\r\n]', re.MULTILINE)


def has_malformed_quotes(path: Path, delimiter: str, encoding: str = "utf-8") -> bool:
    """Whether a line of ``path`` holds a field :func:`malformed_quote_pattern` matches (never for a
    UTF-16/32 file, whose quote is not one byte). One pass in NumPy: only a quote with a byte other
    than a delimiter, quote or line break on both sides can close a field and go on, and only the
    lines holding one are matched against the pattern (about 1 s per GB for a file quoting every field)."""
    if re.fullmatch(r"utf_?(16|32).*", valid_encoding(encoding).replace("-", "_")) or len(delimiter.encode()) != 1:
        return False
    pattern, byte = malformed_quote_pattern(delimiter), delimiter.encode()[0]
    carry = b""
    try:
        for chunk in _chunks(path):
            data = carry + bytes(chunk)
            cut = data.rfind(b"\n") + 1
            if _malformed_in(data[:cut], pattern, byte):
                return True
            carry = data[cut:]
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    return _malformed_in(carry, pattern, byte)


def _malformed_in(block: bytes, pattern: re.Pattern[bytes], delimiter: int) -> bool:
    """Whether a line of ``block`` (whole lines) holds a field ``pattern`` matches."""
    data = np.frombuffer(block, np.uint8)
    quotes = np.flatnonzero(data == 34)
    quotes = quotes[(quotes > 0) & (quotes < len(data) - 1)]
    if len(quotes) == 0:
        return False
    before, after = data[quotes - 1], data[quotes + 1]
    inside = ~np.isin(before, [delimiter, 34, 10, 13]) & ~np.isin(after, [delimiter, 34, 10, 13])
    candidates = quotes[inside]
    if len(candidates) > 1000:  # many quotes inside bare fields: match the block at once
        return pattern.search(block) is not None
    seen: set[int] = set()
    for position in candidates.tolist():
        start = block.rfind(b"\n", 0, position) + 1
        if start in seen:
            continue
        seen.add(start)
        end = block.find(b"\n", position)
        if pattern.search(block[start:end if end >= 0 else len(block)]):
            return True
    return False


def without_lines(path: Path, target: Path, *, limit: int = LONG_LINE_BYTES, quotes_of: str | None = None,
                  keep_first: int = 0) -> list[tuple[int, str, int, str]]:
    """Copy the (decompressed) ``path`` to ``target`` without its lines longer than ``limit`` bytes and,
    with ``quotes_of`` (the delimiter), its lines holding a malformed quoted field
    (:func:`malformed_quote_pattern`); the first ``keep_first`` lines (blank and comment lines and
    the header) are copied as they are. Returns (1-based line, first characters, length in bytes,
    ``"line_too_long"`` or ``"malformed_quote"``) of each line left out."""
    pattern = malformed_quote_pattern(quotes_of) if quotes_of is not None else None
    dropped: list[tuple[int, str, int, str]] = []
    try:
        with open_binary(path) as src, open(target, "wb") as out:
            for number, line in enumerate(src):
                body = line.rstrip(b"\r\n")
                reason = None
                if len(body) > limit:
                    reason = "line_too_long"
                elif pattern is not None and number >= keep_first and pattern.search(body):
                    reason = "malformed_quote"
                if reason is None:
                    out.write(line)
                    continue
                dropped.append((number + 1, body[:_SHOWN_CHARS].decode("utf-8", errors="replace"), len(body), reason))
    except _READ_ERRORS as exc:
        raise _unreadable(path, exc) from exc
    return dropped
