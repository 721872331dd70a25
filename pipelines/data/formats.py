"""Source formats: how to read a source (:class:`SourceSpec`) and which columns hold the canonical fields.

Formats:

- ``taobao``: UserBehavior raw, headerless ``user_id,item_id,category_id,behavior_type,timestamp``
  (pv/cart/fav/buy, Unix seconds), plain or gzip.
- ``ciao``: review logs with header ``user_id,item_id,category_id,rating,helpfulness,timestamp``;
  each row is a ``review`` with ``value`` = rating (1-5).
- ``csv`` / ``parquet``: any columns, with a user-given column map and behaviour map
  (a JSON/YAML file, see docs/data.md, or CLI flags): :func:`build_spec`, :func:`read_column_map_file`.

A spec travels with every landed raw file (its sidecar), so validation and preprocessing read
the file the way it was landed; :mod:`pipelines.data.canonical` applies it to the rows. Nothing
here touches storage or the data, so the command line can import it cheaply.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.contracts import BEHAVIORS, IGNORE_BEHAVIOR
from pipelines.platform.dates import is_time_zone

FORMATS = ("taobao", "ciao", "csv", "parquet")
TS_FORMATS = ("unix_s", "unix_ms", "unix_us", "unix_ns", "unix_auto", "iso")
UNIX_FORMATS = ("unix_s", "unix_ms", "unix_us", "unix_ns", "unix_auto")
DIGITS = r"^[0-9]{1,20}$"
# Any text of 1-256 characters without control characters: category names ("Home & Kitchen",
# "Électronique", "手机"), e-mail-like user ids. Digits-only sources (Taobao, Ciao) keep DIGITS.
GENERIC_ID = r"^[^\x00-\x1f\x7f]{1,256}$"
# Names a delimiter can be given by on the command line, where a tab is awkward to type.
DELIMITER_NAMES = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}
BATCH_BYTES = 16 << 20  # CSV block size when reading a source or a landed raw file

CANONICAL_FIELDS = ("user_id", "item_id", "category_id", "behavior", "ts", "value")
TAOBAO_COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
CIAO_COLUMNS = ["user_id", "item_id", "category_id", "rating", "helpfulness", "timestamp"]
# The keys of a column-map file (docs/data.md).
MAP_FILE_KEYS = ("columns", "behavior_map", "behavior_constant", "ts_format", "timezone", "has_header",
                 "source_columns", "delimiter", "encoding", "id_pattern", "value_range")
TAOBAO_BEHAVIORS = {"pv": "view", "cart": "cart", "fav": "fav", "buy": "buy"}


class SourceError(ValueError):
    """A source file cannot be landed at all; the message names the file, the rule and the numbers."""


@dataclass(frozen=True)
class SourceSpec:
    """How to read one source: its columns, map to canonical fields, behaviours and time format.

    ``column_map`` maps canonical field -> source column (``behavior`` may be absent when
    ``behavior_constant`` is set, ``value`` is optional). ``behavior_map`` maps source codes to
    canonical behaviours (empty: codes are canonical already).
    """

    fmt: str
    column_map: dict[str, str]
    behavior_map: dict[str, str] = field(default_factory=dict)
    behavior_constant: str | None = None
    ts_format: str = "unix_s"
    timezone: str = "UTC"
    has_header: bool = True
    delimiter: str = ","
    encoding: str = "utf-8"  # of a CSV source; landed raw files are always UTF-8
    columns: list[str] | None = None  # expected source columns in order (None: read the header)
    id_pattern: str = GENERIC_ID
    value_range: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["value_range"] = list(self.value_range) if self.value_range else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SourceSpec:
        data = dict(data)
        if data.get("value_range") is not None:
            data["value_range"] = tuple(float(v) for v in data["value_range"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def needs_plain_fields(self) -> bool:
        """Whether a field holding a delimiter, quote or line break marks a mangled row (Taobao)."""
        return self.fmt == "taobao"


TAOBAO_SPEC = SourceSpec(
    fmt="taobao",
    column_map={"user_id": "user_id", "item_id": "item_id", "category_id": "category_id",
                "behavior": "behavior_type", "ts": "timestamp"},
    behavior_map=dict(TAOBAO_BEHAVIORS), ts_format="unix_s", has_header=False,
    columns=list(TAOBAO_COLUMNS), id_pattern=DIGITS)
CIAO_SPEC = SourceSpec(
    fmt="ciao",
    column_map={"user_id": "user_id", "item_id": "item_id", "category_id": "category_id",
                "ts": "timestamp", "value": "rating"},
    behavior_constant="review", ts_format="unix_s", has_header=True, columns=list(CIAO_COLUMNS),
    id_pattern=DIGITS, value_range=(1.0, 5.0))


# --- spec building -----------------------------------------------------------------------------


def build_spec(fmt: str, column_map: dict[str, str] | None = None,
               behavior_map: dict[str, str] | None = None, **options: Any) -> SourceSpec:
    """The :class:`SourceSpec` of ``fmt``; for ``csv``/``parquet`` from ``column_map`` (required) plus
    options from a column-map file (``behavior_constant``, ``ts_format``, ``timezone``, ``has_header``,
    ``delimiter``, ``encoding``, ``id_pattern``, ``value_range``). Raises :class:`SourceError` on a bad map."""
    if fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "taobao":
        base = TAOBAO_SPEC
    elif fmt == "ciao":
        base = CIAO_SPEC
    else:
        if not column_map:
            raise SourceError(f"format {fmt!r} needs a column map (canonical field -> source column), "
                              "e.g. --column-map map.yaml or --map user_id=uid --map ts=event_time ...")
        base = SourceSpec(fmt=fmt, column_map={}, has_header=True)
    cmap = dict(base.column_map if column_map is None else column_map)
    unknown = sorted(set(cmap) - set(CANONICAL_FIELDS))
    if unknown:
        raise SourceError(f"column map: unknown canonical field(s) {unknown}; allowed: {list(CANONICAL_FIELDS)}")
    explicit_constant = options.get("behavior_constant")
    bconst = options.pop("behavior_constant", base.behavior_constant)
    if explicit_constant and "behavior" in cmap:  # the constant silently replaced every row's behaviour
        raise SourceError(f"both a behaviour column (behavior -> {cmap['behavior']!r}) and a behaviour constant "
                          f"({explicit_constant!r}) are given: keep one of them")
    required = ["user_id", "category_id", "ts"] + ([] if bconst else ["behavior"])  # item_id is optional
    missing = [f for f in required if f not in cmap]
    if missing:
        raise SourceError(f"column map: no source column for canonical field(s) {missing}")
    # A given map extends the format's own codes (Taobao's pv, cart, fav, buy) and may override them.
    bmap = {**base.behavior_map, **(behavior_map or {})}
    if bconst and bconst not in BEHAVIORS:
        raise SourceError(f"behaviour constant {bconst!r} is not a canonical behaviour {list(BEHAVIORS)}")
    bad = sorted({v for v in bmap.values() if v not in BEHAVIORS and v != IGNORE_BEHAVIOR})
    if bad:
        raise SourceError(f"behaviour map: {bad} not canonical behaviours {list(BEHAVIORS)} "
                          f"(or {IGNORE_BEHAVIOR!r}, to set the code's rows aside as out of scope)")
    ts_format = options.pop("ts_format", base.ts_format)
    if ts_format not in TS_FORMATS:
        raise SourceError(f"ts_format {ts_format!r}: expected one of {', '.join(TS_FORMATS)}")
    has_header = options.pop("has_header", base.has_header)
    if not isinstance(has_header, bool):
        raise SourceError(f"has_header {has_header!r}: expected true or false")
    delimiter = options.pop("delimiter", base.delimiter)
    delimiter = DELIMITER_NAMES.get(delimiter.lower(), delimiter) if isinstance(delimiter, str) else delimiter
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\r\n\"":
        raise SourceError(f"delimiter {delimiter!r}: expected one character (e.g. ',', ';', '|' or a tab: '\\t')")
    spec = SourceSpec(
        fmt=fmt, column_map=cmap, behavior_map=bmap, behavior_constant=bconst, ts_format=ts_format,
        timezone=_zone(options.pop("timezone", base.timezone)), has_header=has_header, delimiter=delimiter,
        encoding=str(options.pop("encoding", base.encoding)), columns=options.pop("columns", base.columns),
        id_pattern=options.pop("id_pattern", base.id_pattern),
        value_range=_value_range(options.pop("value_range", base.value_range)))
    if options:
        raise SourceError(f"column map: unknown option(s) {sorted(options)}")
    valid_encoding(spec.encoding)
    if not isinstance(spec.id_pattern, str):
        raise SourceError(f"id_pattern {spec.id_pattern!r}: expected a regular expression as text")
    try:
        re.compile(spec.id_pattern)
    except re.error as exc:
        raise SourceError(f"id_pattern {spec.id_pattern!r} is not a regular expression: {exc}") from exc
    return spec


def _zone(name: Any) -> str:
    """``name`` when it is an IANA time zone (``UTC``, ``Europe/Berlin``); else :class:`SourceError`."""
    if not is_time_zone(name):
        raise SourceError(f"timezone {name!r} is not a known time zone (e.g. UTC, Europe/Berlin, Asia/Shanghai)")
    return str(name)


def _value_range(value: Any) -> tuple[float, float] | None:
    """``[low, high]`` as floats (None stays None); :class:`SourceError` for anything else."""
    if value is None:
        return None
    if isinstance(value, str):  # "15" would otherwise read as [1, 5]
        raise SourceError(f"value_range {value!r}: expected [low, high], two numbers")
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise SourceError(f"value_range {value!r}: expected [low, high], two numbers") from exc
    if low > high:
        raise SourceError(f"value_range {value!r}: low {low:g} is above high {high:g}")
    return low, high


def valid_encoding(encoding: str) -> str:
    """``encoding`` as Python's codec name; :class:`SourceError` when Python does not know it."""
    try:
        return codecs.lookup(encoding).name
    except LookupError as exc:
        raise SourceError(f"encoding {encoding!r} is not known (e.g. utf-8, latin-1, cp1252, gb18030)") from exc


def read_column_map_file(path: Path) -> dict[str, Any]:
    """Parse a column-map file (JSON or YAML; format in docs/data.md) into keyword arguments of
    :func:`build_spec`: ``column_map``, ``behavior_map`` and options."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows Notepad writes one) is not text
    except OSError as exc:
        raise SourceError(f"column map file {path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"column map file {path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    try:
        data = (yaml.safe_load(text) or {}) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except Exception as exc:  # yaml/json errors carry line numbers in their text
        raise SourceError(f"column map file {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("columns"), dict):
        raise SourceError(f"column map file {path}: expected a mapping with a 'columns' mapping "
                          "(canonical field -> source column)")
    unknown = sorted(set(data) - set(MAP_FILE_KEYS))
    if unknown:
        raise SourceError(f"column map file {path}: unknown key(s) {unknown}; known: {list(MAP_FILE_KEYS)}")
    out: dict[str, Any] = {"column_map": {str(k): str(v) for k, v in data.pop("columns").items()}}
    if "behavior_map" in data:
        bmap = data.pop("behavior_map") or {}
        if not isinstance(bmap, dict):
            raise SourceError(f"column map file {path}: behavior_map must be a mapping (source code -> behaviour)")
        # YAML 1.1 reads yes/no/on/off as booleans and 010 as the number 8: such a code would never match.
        odd = [k for k in bmap if not isinstance(k, str)]
        if odd:
            raise SourceError(f"column map file {path}: behavior_map code(s) {odd} are not text (YAML reads "
                              "yes/no/on/off as booleans and numbers as numbers): quote them, e.g. 'yes': buy")
        out["behavior_map"] = {k: str(v) for k, v in bmap.items()}
    columns = data.pop("source_columns", None)
    if columns is not None:
        if not isinstance(columns, list):
            raise SourceError(f"column map file {path}: source_columns must be a list of column names, "
                              f"got {columns!r}")
        out["columns"] = [str(c) for c in columns]
    out.update(data)
    return out
