"""Notebook helpers: live progress for long operations, RPO over time, bytes moved per cycle.

`progress()` adapts the library's `on_progress(done, total)` callbacks
(replicate, verify_restore_point, failback, planned_failover) to a
`tqdm.auto` bar in bytes, with rate and ETA: a widget in Jupyter, text in a
terminal. `protect` reports its clone task's percentage instead: pass the
bar's `percent` method. tqdm is a base dependency; the widget needs ipywidgets (the
`notebook` extra), and without it the bar falls back to text.

`plot_rpo()` and `plot_bytes_per_cycle()` draw with matplotlib and answer a
`matplotlib.figure.Figure` (no pyplot state, so they are safe in scripts and
threads); in IPython and Jupyter a returned Figure shows as a PNG, with or
without `%matplotlib inline`. They need the `notebook` extra:
`pip install 'vsphere-replicator[notebook]'`; without it they raise
MissingExtra naming it. `rpo_series()` is the data behind the RPO plot, with
no dependency.
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Protocol

from vsphere_replicator.checks import check_text
from vsphere_replicator.display import optional
from vsphere_replicator.errors import InvalidInput
from vsphere_replicator.policies.runner import RunRecord
from vsphere_replicator.replication.settings import CycleResult
from vsphere_replicator.replication.state import RestorePoint

__all__ = [
    "FigureLike",
    "Progress",
    "RPOSample",
    "plot_bytes_per_cycle",
    "plot_rpo",
    "progress",
    "rpo_series",
]


class Progress:
    """An `on_progress(done, total)` callback that drives a tqdm bar in bytes; a context manager.

    The bar appears at the first call (when the total is known), counts
    bytes with binary prefixes and shows rate and ETA. `close()` (or leaving
    the `with` block) finishes it. A new pass (a total that changes, or a
    count that goes back, as failback reports each disk in turn) restarts
    the bar at the new total. `percent(value)` is the callback for protect,
    whose clone task reports 0-100.
    """

    def __init__(self, description: str, *, leave: bool = True, **tqdm_options: Any) -> None:
        check_text(description, "description")
        self.description = description
        self.leave = leave
        self.tqdm_options = tqdm_options
        self.bar: Any = None
        self.done = 0
        self.total: int | None = None

    def _open(self, total: int, *, in_bytes: bool) -> Any:
        options: dict[str, Any] = {
            "total": total,
            "desc": self.description,
            "unit": "B" if in_bytes else "%",
            "unit_scale": in_bytes,
            "unit_divisor": 1024,
            "leave": self.leave,
            "dynamic_ncols": True,
            **self.tqdm_options,
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tqdm.auto's "experimental" warning outside Jupyter
            from tqdm.auto import tqdm as auto_tqdm
        try:
            return auto_tqdm(**options)
        except ImportError:  # in Jupyter without ipywidgets: tqdm.notebook cannot draw its widget
            from tqdm.std import tqdm as text_tqdm

            return text_tqdm(**options)

    def __call__(self, done: int, total: int) -> None:
        self._advance(done, total, in_bytes=True)

    def percent(self, value: int) -> None:
        """The callback for a task that reports a percentage (protect's clone)."""
        self._advance(min(max(value, 0), 100), 100, in_bytes=False)

    def _advance(self, done: int, total: int, *, in_bytes: bool) -> None:
        if self.bar is None:
            self.bar = self._open(total, in_bytes=in_bytes)
            self.total, self.done = total, 0
        elif total != self.total or done < self.done:
            self.bar.reset(total=total)
            self.total, self.done = total, 0
        step = done - self.done
        if step:
            self.bar.update(step)
            self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def progress(description: str, *, leave: bool = True, **tqdm_options: Any) -> Progress:
    """A progress bar for one operation, to pass as its `on_progress`.

        with progress("replicate db-01") as bar:
            replicate(conn, "db-01", replica_access=access, on_progress=bar)
        with progress("protect db-01") as bar:
            protect(conn, "db-01", ReplicaTarget(datastore="secondary-ds"), on_progress=bar.percent)

    `tqdm_options` go to tqdm (`file=`, `ncols=`, `mininterval=`, …).
    """
    return Progress(description, leave=leave, **tqdm_options)


@dataclass(frozen=True, slots=True)
class RPOSample:
    """The recovery point objective at one moment: how old the newest recoverable data was."""

    at: datetime
    rpo_seconds: float


class FigureLike(Protocol):
    """What the plots answer: a matplotlib Figure (matplotlib is optional, so named by what it promises)."""

    @property
    def axes(self) -> list[Any]: ...

    def savefig(self, fname: Any, **kwargs: Any) -> None: ...


def rpo_series(
    history: Sequence[RestorePoint] | Sequence[RunRecord], *, until: datetime | None = None
) -> tuple[RPOSample, ...]:
    """RPO over time as a sawtooth: it grows with the clock and drops when new data lands.

    From restore points: a point makes the data of its `created` moment
    recoverable (and `confirmed` renews it), so the RPO drops to zero there.
    From run records: a successful cycle makes the data of its `started`
    moment recoverable at `finished`, so the RPO drops to the cycle's
    duration; failed cycles change nothing. `until` (default: the last
    event) extends the last tooth. Two samples per event: just before, and
    just after.
    """
    events: list[tuple[datetime, datetime]] = []  # (when it became recoverable, whose data it holds)
    for item in history:
        if isinstance(item, RestorePoint):
            events.append((item.created, item.created))
            if item.confirmed is not None:
                events.append((item.confirmed, item.confirmed))
        elif isinstance(item, RunRecord):
            if item.ok:
                events.append((item.finished, item.started))
        else:
            raise InvalidInput(f"rpo_series takes RestorePoint or RunRecord items, not {type(item).__name__}")
    events.sort()
    samples: list[RPOSample] = []
    data_of: datetime | None = None
    for landed, holds in events:
        if data_of is not None:
            samples.append(RPOSample(landed, (landed - data_of).total_seconds()))
        data_of = max(holds, data_of) if data_of is not None else holds
        samples.append(RPOSample(landed, (landed - data_of).total_seconds()))
    if until is not None and data_of is not None and (not samples or until > samples[-1].at):
        samples.append(RPOSample(until, (until - data_of).total_seconds()))
    return tuple(samples)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _shown_in_ipython(figure_class: type) -> None:
    """Have IPython show a returned Figure as a PNG, as `%matplotlib inline` would (if nothing else does).

    Without pyplot no backend registers a formatter, and a notebook would print
    "<Figure size 700x320 with 1 Axes>" instead of the plot.
    """
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return
    formatter = shell.display_formatter.formatters["image/png"]
    try:
        formatter.lookup_by_type(figure_class)
    except KeyError:
        formatter.for_type(figure_class, _png)


def _figure(feature: str) -> FigureLike:
    figure_module = optional("matplotlib.figure", feature)
    _shown_in_ipython(figure_module.Figure)
    figure: FigureLike = figure_module.Figure(figsize=(7, 3.2), layout="constrained")
    return figure


def plot_rpo(
    history: Sequence[RestorePoint] | Sequence[RunRecord],
    *,
    target_rpo: timedelta | None = None,
    until: datetime | None = None,
    title: str | None = None,
) -> FigureLike:
    """A Figure of the RPO over time (`rpo_series`), with the target RPO as a dashed line.

    `history` is a VM's restore points (`list_restore_points`) or the run
    records of a policy run (`run_policies`). Needs the notebook extra.
    """
    samples = rpo_series(history, until=until)
    figure: Any = _figure("plot_rpo()")
    axes = figure.add_subplot()
    axes.plot([s.at for s in samples], [s.rpo_seconds for s in samples], label="RPO", color="tab:blue")
    if target_rpo is not None:
        axes.axhline(target_rpo.total_seconds(), linestyle="--", color="tab:red", label="target RPO")
    axes.set_ylabel("RPO (seconds)")
    axes.set_xlabel("time")
    axes.set_ylim(bottom=0)
    axes.set_title(title or "RPO over time")
    axes.legend(loc="upper left")
    figure.autofmt_xdate()
    shown: FigureLike = figure
    return shown


def plot_bytes_per_cycle(
    history: Sequence[RestorePoint] | Sequence[CycleResult], *, title: str | None = None
) -> FigureLike:
    """A Figure of bytes CBT reported changed and bytes moved, one pair of bars per restore point.

    `history` is restore points (`list_restore_points`) or cycle results
    (what `protect` and `replicate` return). Needs the notebook extra.
    """
    labels: list[str] = []
    changed: list[int] = []
    moved: list[int] = []
    for item in history:
        if isinstance(item, RestorePoint):
            labels.append(item.id)
        elif isinstance(item, CycleResult):
            labels.append(item.restore_point)
        else:
            raise InvalidInput(
                f"plot_bytes_per_cycle takes RestorePoint or CycleResult items, not {type(item).__name__}"
            )
        changed.append(item.bytes_changed)
        moved.append(item.bytes_moved)
    figure: Any = _figure("plot_bytes_per_cycle()")
    axes = figure.add_subplot()
    positions = list(range(len(labels)))
    mib = float(1 << 20)
    axes.bar([p - 0.2 for p in positions], [c / mib for c in changed], width=0.4, label="changed (CBT)")
    axes.bar([p + 0.2 for p in positions], [m / mib for m in moved], width=0.4, label="moved")
    axes.set_xticks(positions, labels)
    axes.set_ylabel("MiB")
    axes.set_title(title or "bytes per cycle")
    axes.legend(loc="upper right")
    shown: FigureLike = figure
    return shown
