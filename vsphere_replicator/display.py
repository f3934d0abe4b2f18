"""How the library's plain data shows itself in Jupyter and IPython: HTML and pretty text, no I/O.

A class that mixes in `Shown` gets `_repr_html_` (a compact table) and
`_repr_pretty_` (aligned text) built from its dataclass fields; a sequence
that mixes in `ShownRows` shows one row per item. Both are pure functions of
the values, so they sit in the foundation where every layer can use them.

Names, tags and error messages come from users and from vCenter, so every
piece of text is escaped with `html.escape` (quotes too) before it enters
the markup, and the markup holds no JavaScript and no event attributes.
Collections stay bounded: at most `MAX_ROWS` rows, then "… N more".
Fields declared `repr=False` (passwords) are never shown.

`to_frame` builds a pandas DataFrame with declared dtypes; pandas is
imported only there, and `optional()` turns a missing optional dependency
into MissingExtra naming the extra that brings it.
"""

from __future__ import annotations

import dataclasses
import html
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, ClassVar, Protocol

from vsphere_replicator.errors import MissingExtra

__all__ = [
    "MAX_ROWS",
    "NOTEBOOK_EXTRA",
    "DataFrameLike",
    "DtypesLike",
    "Shown",
    "ShownRows",
    "html_table",
    "optional",
    "show_value",
    "to_frame",
]

MAX_ROWS = 20  # rows of a collection shown before "… N more"
MAX_TEXT = 200  # characters of one value shown before "…"
NOTEBOOK_EXTRA = "notebook"
_NESTED_DEPTH = 2  # a dataclass inside a dataclass inside … is shown as text below this depth
_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_STYLE = (
    "<style>.vr-repr table{border-collapse:collapse;font-size:90%}"
    ".vr-repr th,.vr-repr td{padding:1px 8px;text-align:left;vertical-align:top}"
    ".vr-repr caption{text-align:left;font-weight:bold}.vr-more{color:#777}</style>"
)


class DtypesLike(Protocol):
    """A DataFrame's `dtypes`: (column, dtype) pairs."""

    def items(self) -> Iterable[tuple[str, object]]: ...


class DataFrameLike(Protocol):
    """What `to_dataframe()` answers: a pandas.DataFrame.

    pandas is optional, so the API names the part of a DataFrame it promises
    (columns, dtypes, rows, column access); everything else pandas offers is there too.
    """

    @property
    def columns(self) -> Iterable[str]: ...

    @property
    def dtypes(self) -> DtypesLike: ...

    def __len__(self) -> int: ...

    def __getitem__(self, key: Any) -> Any: ...


class _Pretty(Protocol):
    """The part of IPython's pretty printer the reprs use."""

    def text(self, text: str) -> None: ...


def optional(module: str, feature: str, *, extra: str = NOTEBOOK_EXTRA) -> ModuleType:
    """Import an optional dependency, or raise MissingExtra saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"{feature} needs {module.partition('.')[0]}, which the {extra!r} extra installs: "
            f"pip install 'vsphere-replicator[{extra}]'",
            extra=extra,
        ) from exc


def human_size(count: int) -> str:
    """Bytes in binary units for people: 1536 -> "1.5 KiB"."""
    value = float(count)
    for unit in _BINARY:
        if abs(value) < 1024 or unit == _BINARY[-1]:
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"  # pragma: no cover - the loop always returns


def human_seconds(seconds: float) -> str:
    """A duration for people: 0.4 -> "0.4s", 5400 -> "1h30m"."""
    if abs(seconds) < 60:
        return f"{seconds:.1f}s"
    remaining = int(seconds)
    parts = []
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, length)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _is_size(name: str) -> bool:
    return "bytes" in name or name in {"capacity", "disk_size", "free_space"}


def show_value(name: str, value: object) -> str:
    """One field's value as plain text (not yet escaped): sizes and durations readable, long text clipped."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and _is_size(name):
        return human_size(value)
    if isinstance(value, float) and name.endswith("_seconds"):
        return human_seconds(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, timedelta):
        return human_seconds(value.total_seconds())
    if isinstance(value, Mapping):
        shown = [f"{k}: {v}" for k, v in list(value.items())[:MAX_ROWS]]
        more = f", … {len(value) - MAX_ROWS} more" if len(value) > MAX_ROWS else ""
        return _clip(", ".join(shown) + more)
    if isinstance(value, tuple | list | frozenset | set) and not _is_data(value):
        items = list(value)
        shown = [str(v) for v in items[:MAX_ROWS]]
        more = f", … {len(items) - MAX_ROWS} more" if len(items) > MAX_ROWS else ""
        return _clip(", ".join(shown) + more) if items else "—"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _clip(f"{type(value).__name__}({_title(value)})")
    return _clip(str(value))


def _is_data(value: Iterable[object]) -> bool:
    """A non-empty sequence of dataclass instances: shown as a nested table."""
    items = list(value)
    return bool(items) and all(dataclasses.is_dataclass(v) and not isinstance(v, type) for v in items)


def _fields(obj: object) -> list[tuple[str, object]]:
    """(name, value) of the fields a repr may show: every dataclass field but those with repr=False."""
    extra: Callable[[], Sequence[tuple[str, object]]] | None = getattr(obj, "_shown_extra", None)
    base = [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr]  # type: ignore[arg-type]
    return base + list(extra() if extra is not None else ())


def _title(obj: object) -> str:
    """The value that names an object: its `_shown_title` field, else `vm`, `name` or `id` when present."""
    for name in (getattr(obj, "_shown_title", None), "vm", "name", "id", "url"):
        if name and hasattr(obj, name):
            value = getattr(obj, name)
            return _title(value) if dataclasses.is_dataclass(value) else str(value)
    return ""


def _cell(name: str, value: object, depth: int) -> str:
    if depth < _NESTED_DEPTH and isinstance(value, tuple | list) and _is_data(value):
        return _rows_html(list(value), depth=depth + 1)
    if depth < _NESTED_DEPTH and dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _object_html(value, depth=depth + 1)
    return html.escape(show_value(name, value), quote=True)


def _object_html(obj: object, *, depth: int = 0) -> str:
    caption = html.escape(f"{type(obj).__name__} {_title(obj)}".strip(), quote=True)
    rows = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{_cell(name, value, depth)}</td></tr>"
        for name, value in _fields(obj)
    )
    return f"<table><caption>{caption}</caption><tbody>{rows}</tbody></table>"


def _columns_of(items: Sequence[object]) -> tuple[str, ...]:
    declared: tuple[str, ...] | None = getattr(items[0], "_shown_columns", None) if items else None
    if declared:
        return declared
    return tuple(name for name, _ in _fields(items[0])) if items else ()


def _row_values(item: object, columns: Sequence[str]) -> list[tuple[str, object]]:
    values = dict(_fields(item))
    return [(c, values.get(c, getattr(item, c, None))) for c in columns]


def html_table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, total: int, caption: str | None = None
) -> str:
    """A table of already-escaped cells, with a "… N more" row when `total` exceeds the rows given."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if total > len(rows):
        body += (
            f'<tr><td class="vr-more" colspan="{max(len(columns), 1)}">… {total - len(rows)} more</td></tr>'
        )
    title = f"<caption>{html.escape(caption, quote=True)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _rows_html(items: Sequence[object], *, depth: int = 0, caption: str | None = None) -> str:
    columns = _columns_of(items)
    shown = items[:MAX_ROWS]
    cells = [[_cell(n, v, _NESTED_DEPTH) for n, v in _row_values(item, columns)] for item in shown]
    return html_table(columns, cells, total=len(items), caption=caption)


def _text_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return lines


def _object_text(obj: object) -> str:
    lines = [f"{type(obj).__name__} {_title(obj)}".rstrip()]
    for name, value in _fields(obj):
        if isinstance(value, tuple | list) and _is_data(value):
            lines.append(f"  {name}: {len(value)}")
            lines += ["    " + line for line in _rows_text(list(value)).splitlines()]
        else:
            lines.append(f"  {name}: {show_value(name, value)}")
    return "\n".join(lines)


def _rows_text(items: Sequence[object], caption: str | None = None) -> str:
    columns = _columns_of(items)
    rows = [[show_value(n, v) for n, v in _row_values(item, columns)] for item in items[:MAX_ROWS]]
    lines = [caption] if caption else []
    lines += _text_table(columns, rows) if items else []
    if len(items) > MAX_ROWS:
        lines.append(f"… {len(items) - MAX_ROWS} more")
    return "\n".join(lines)


class Shown:
    """Mixin for a dataclass: an escaped HTML table and aligned text of its fields.

    A class may set `_shown_title` (the field that names it) and define
    `_shown_extra()` for derived values; `_shown_columns` picks the columns
    when it appears as a row of a collection.
    """

    __slots__ = ()
    _shown_title: ClassVar[str | None] = None
    _shown_columns: ClassVar[tuple[str, ...] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # IPython's printer takes the first class in the MRO that defines `_repr_pretty_` or `__repr__`:
        # a dataclass defines its own `__repr__`, so the method must sit in the subclass's own dict.
        super().__init_subclass__(**kwargs)
        cls._repr_pretty_ = Shown._repr_pretty_  # type: ignore[method-assign]

    def _repr_html_(self) -> str:
        return f'<div class="vr-repr">{_STYLE}{_object_html(self)}</div>'

    def _repr_pretty_(self, p: _Pretty, cycle: bool) -> None:
        p.text(f"{type(self).__name__}(…)" if cycle else _object_text(self))


class ShownRows:
    """Mixin for a sequence of dataclasses: one row each, at most MAX_ROWS, then "… N more".

    A subclass sets `_noun` (what a row is, plural) and `_frame_columns`,
    the (column, pandas dtype) pairs `to_dataframe()` builds.
    """

    __slots__ = ()
    _noun: ClassVar[tuple[str, str]] = ("item", "items")  # (one, several)
    _frame_columns: ClassVar[tuple[tuple[str, str], ...]] = ()

    def _items(self) -> list[object]:
        items: list[object] = list(self)  # type: ignore[call-overload]  # mixed into tuple or list subclasses
        return items

    def _caption(self) -> str:
        count = len(self._items())
        of = getattr(self, "vm", None)
        noun = self._noun[0] if count == 1 else self._noun[1]
        return f"{type(self).__name__}{f' of {of}' if of else ''}: {count} {noun}"

    def _repr_html_(self) -> str:
        return f'<div class="vr-repr">{_STYLE}{_rows_html(self._items(), caption=self._caption())}</div>'

    def _repr_pretty_(self, p: _Pretty, cycle: bool) -> None:
        p.text(f"{type(self).__name__}(…)" if cycle else _rows_text(self._items(), self._caption()))

    def _frame_row(self, item: Any) -> Mapping[str, object]:
        """The values of one row of the DataFrame; by default the item's attributes of those names."""
        return {name: getattr(item, name) for name, _ in self._frame_columns}

    def to_dataframe(self) -> DataFrameLike:
        """A pandas DataFrame, one row per item, with the columns and dtypes `_frame_columns` documents.

        Needs the notebook extra (pandas); raises MissingExtra without it.
        """
        return to_frame([self._frame_row(i) for i in self._items()], self._frame_columns)


def to_frame(rows: Sequence[Mapping[str, object]], columns: Sequence[tuple[str, str]]) -> DataFrameLike:
    """A DataFrame of `rows` with exactly `columns`, each cast to its dtype.

    Datetime columns ("datetime64[ns, UTC]") accept aware datetimes in any
    zone and None (NaT); the nullable dtypes ("Int64", "boolean", "string")
    take None as <NA>.
    """
    pd = optional("pandas", "to_dataframe()")
    data: dict[str, Any] = {}
    for name, dtype in columns:
        values = [row[name] for row in rows]
        if dtype.startswith("datetime64"):
            data[name] = pd.Series(pd.to_datetime(values, utc=True), dtype=dtype)
        else:
            data[name] = pd.Series(values, dtype=dtype)
    frame: DataFrameLike = pd.DataFrame(data, columns=[name for name, _ in columns])
    return frame
