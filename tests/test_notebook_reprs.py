"""What a notebook shows: escaped, bounded HTML and pretty text; DataFrames with documented dtypes; plots.

No lab: every object is built by hand, with the names an attacker (or an
unlucky operator) would give a VM. tests/test_notebooks.py runs the example
notebooks against a lab.
"""

from __future__ import annotations

import io
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from IPython.core.formatters import HTMLFormatter
from IPython.lib import pretty as ipython_pretty

from vsphere_replicator.connection import ConnectionSettings, SessionSummary
from vsphere_replicator.display import MAX_ROWS, MAX_TEXT
from vsphere_replicator.errors import InvalidInput, MissingExtra
from vsphere_replicator.inventory import DiskInfo, SnapshotInfo, VMInfo
from vsphere_replicator.lab.process import LabInfo
from vsphere_replicator.networks import NicChange
from vsphere_replicator.notebook import RPOSample, plot_bytes_per_cycle, plot_rpo, progress, rpo_series
from vsphere_replicator.policies.base import Selection
from vsphere_replicator.policies.runner import RunRecord, RunRecords
from vsphere_replicator.replication.failover import FailoverResult
from vsphere_replicator.replication.protection import SettingsChange, UnprotectResult
from vsphere_replicator.replication.restore_points import DiskCheck, RestorePointCheck
from vsphere_replicator.replication.settings import CycleResult, CycleSettings, ReplicaTarget
from vsphere_replicator.replication.state import (
    DiskState,
    ReplicaState,
    RestorePoint,
    RestorePoints,
    SourceIdentity,
)
from vsphere_replicator.replication.status import ProtectionStatus, StatusList

SCRIPT = "<script>alert(1)</script>"


def pretty(obj: object) -> str:
    """What IPython prints for `obj` (IPython.lib.pretty is untyped)."""
    text: str = ipython_pretty.pretty(obj)  # type: ignore[no-untyped-call]  # IPython has no annotations
    return text


QUOTES = "a&b\"c'"
HOSTILE = {SCRIPT: "&lt;script&gt;alert(1)&lt;/script&gt;", QUOTES: "a&amp;b&quot;c&#x27;"}
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def disk(name: str, key: int = 2000) -> DiskInfo:
    return DiskInfo(
        key=key,
        label=f"Hard disk of {name}",
        controller_key=1000,
        unit_number=0,
        capacity=64 << 20,
        file_name=f"[primary-ds] {name}/{name}.vmdk",
        datastore="primary-ds",
        thin=True,
        eager_scrub=False,
        change_id="52 aa/3",
        uuid=None,
        parent_file=None,
    )


def vm_info(name: str, disks: int = 1) -> VMInfo:
    snapshot = SnapshotInfo(
        moref="snapshot-1", id=1, name=name, description=name, created=T0, state="poweredOff", quiesced=False
    )
    return VMInfo(
        moref="vm-1",
        name=name,
        instance_uuid="uuid-1",
        power_state="poweredOn",
        template=False,
        host="host-1",
        resource_pool=None,
        folder=f"DC0/vm/{name}",
        datastores=("primary-ds",),
        disks=tuple(disk(name, 2000 + i) for i in range(disks)),
        snapshots=(snapshot,),
        current_snapshot="snapshot-1",
        consolidation_needed=False,
        cbt_enabled=True,
    )


def point(number: int, *, snapshot: str = "snapshot-9", moved: int = 1 << 20) -> RestorePoint:
    return RestorePoint(
        id=f"rp-{number:06d}",
        snapshot=snapshot,
        created=T0 + timedelta(minutes=10 * number),
        quiesced=False,
        bytes_moved=moved,
        bytes_changed=moved + 4096,
        digests=((2000, "ab" * 8),),
    )


def status(name: str, error: str | None = None) -> ProtectionStatus:
    return ProtectionStatus(
        vm=name,
        replica=f"{name}-replica",
        state="protected",
        restore_points=2,
        latest_point="rp-000002",
        latest_created=T0,
        age_seconds=95.5,
        target_rpo_seconds=3600.0,
        compliant=True,
        last_bytes_moved=1 << 20,
        last_bytes_changed=None,
        last_error=error,
    )


def record(name: str, minute: int, *, ok: bool = True, error: str | None = None) -> RunRecord:
    started = T0 + timedelta(minutes=minute)
    return RunRecord(
        vm=name,
        protection=f"protect {name}",
        policy="continuous",
        started=started,
        finished=started + timedelta(seconds=30),
        ok=ok,
        summary=f"{name}: restore point rp-1",
        error=error,
    )


def cycle(name: str) -> CycleResult:
    return CycleResult(
        vm=name,
        replica=f"{name}-replica",
        restore_point="rp-000003",
        created=T0,
        quiesced=False,
        bytes_changed=3 << 20,
        bytes_moved=2 << 20,
        full_resync=(),
        resumed=False,
        seconds=1.5,
    )


def replica_state(name: str) -> ReplicaState:
    return ReplicaState(
        source=SourceIdentity(moref="vm-1", name=name, instance_uuid="uuid-1"),
        replica_uuid="uuid-2",
        target=ReplicaTarget(datastore="secondary-ds"),
        settings=CycleSettings(),
        disks=(
            DiskState(source_key=2000, replica_key=2000, capacity=64 << 20, change_id="x", source_uuid=None),
        ),
        restore_points=(point(1, snapshot=name),),
        next_point=2,
        last_error=name,
    )


def everything(name: str) -> list[Any]:
    """One of each object a notebook user holds, with `name` wherever a user-chosen name goes."""
    return [
        vm_info(name),
        disk(name),
        status(name, error=f"cannot reach {name}"),
        StatusList([status(name), status("other")]),
        point(1, snapshot=name),
        RestorePoints([point(1, snapshot=name), point(2)], vm=name),
        replica_state(name),
        cycle(name),
        FailoverResult(
            vm=name,
            running=f"{name}-failover-test",
            kind="test",
            restore_point="rp-1",
            nics=(NicChange(label="Network adapter 1", old=name, new="VM Network"),),
            final_cycle=cycle(name),
        ),
        RestorePointCheck(
            vm=name, restore_point="rp-1", disks=(DiskCheck(replica_key=2000, expected=name, actual=name),)
        ),
        record(name, 0, ok=False, error=f"{name} failed"),
        RunRecords([record(name, 0), record("other", 10)]),
        LabInfo(
            url=f"https://{name}/sdk",
            host=name,
            port=443,
            user=name,
            password="hunter2-secret",
            ca_file="/tmp/ca.pem",
            datacenter=name,
            datastores={name: "/tmp/ds"},
            pid=1,
            state_dir="/tmp/lab",
        ),
        ConnectionSettings(host=name, user=name, password="hunter2-secret"),
        Selection(names=(name,), tags=(f"{name}:{name}",)),
        UnprotectResult(vm=name, replica=f"{name}-replica", deleted=True, snapshots_removed=2),
        SettingsChange(
            vm=name, replica=name, before=CycleSettings(), after=CycleSettings(keep=3), changed=("keep",)
        ),
        SessionSummary(
            host=name,
            port=443,
            user=name,
            server=name,
            api_version="8.0",
            logged_in=True,
            relogins=0,
            tls="CA file",
        ),
    ]


CASES = [(name, obj) for name in HOSTILE for obj in everything(name)]


@pytest.mark.parametrize(("name", "obj"), CASES, ids=[f"{type(o).__name__}-{n!r}" for n, o in CASES])
def test_every_html_repr_escapes_the_users_names_and_holds_no_script(name: str, obj: Any) -> None:
    shown = obj._repr_html_()
    assert HOSTILE[name] in shown
    assert name not in shown
    assert "<script" not in shown.lower()
    assert "javascript:" not in shown.lower()
    assert re.search(r"<[^>]*\son\w+\s*=", shown) is None  # no event handler attributes
    assert "hunter2" not in shown


@pytest.mark.parametrize(("name", "obj"), CASES, ids=[f"{type(o).__name__}-{n!r}" for n, o in CASES])
def test_ipython_shows_every_object_through_its_own_reprs(name: str, obj: Any) -> None:
    """IPython picks `_repr_pretty_` over a dataclass's generated `__repr__`, and `_repr_html_` for HTML."""
    text = pretty(obj)
    assert text.startswith(type(obj).__name__)
    assert name in text  # plain text is not markup: the name as it is
    assert "hunter2" not in text
    assert HTMLFormatter()(obj) == obj._repr_html_()


def test_a_large_collection_shows_at_most_max_rows_then_how_many_more() -> None:
    points = RestorePoints(point(i) for i in range(1000))
    shown = points._repr_html_()
    assert shown.count("<tr><td>") == MAX_ROWS
    assert f"… {1000 - MAX_ROWS} more" in shown
    assert "RestorePoints: 1000 restore points" in shown
    text = pretty(points).splitlines()
    assert len(text) == 1 + 1 + MAX_ROWS + 1  # caption, header, rows, "… N more"
    assert text[-1] == f"… {1000 - MAX_ROWS} more"


def test_nested_collections_and_long_texts_are_bounded_too() -> None:
    vm = vm_info("big", disks=100)
    shown = vm._repr_html_()
    assert shown.count("Hard disk of big") == MAX_ROWS
    assert f"… {100 - MAX_ROWS} more" in shown
    long_error = status("vm", error="x" * 5000)
    assert "x" * MAX_TEXT not in long_error._repr_html_()
    assert "x" * (MAX_TEXT - 1) + "…" in long_error._repr_html_()
    many_nics = FailoverResult(
        vm="vm",
        running="vm",
        kind="test",
        restore_point="rp-1",
        nics=tuple(NicChange(label=f"nic-{i}", old="a", new="b") for i in range(50)),
    )
    assert pretty(many_nics).count("nic-") == MAX_ROWS


def test_sizes_and_durations_read_as_units() -> None:
    text = pretty(status("vm"))
    assert "last_bytes_moved: 1.0 MiB" in text
    assert "age_seconds: 1m35s" in text
    assert "compliant: yes" in text
    assert "last_bytes_changed: —" in text


def test_status_list_to_dataframe_has_the_documented_columns_and_dtypes() -> None:
    frame = StatusList([status("a"), status("b", error="boom")]).to_dataframe()
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == {
        "vm": "string",
        "replica": "string",
        "state": "string",
        "restore_points": "int64",
        "latest_point": "string",
        "latest_created": "datetime64[ns, UTC]",
        "age_seconds": "float64",
        "target_rpo_seconds": "float64",
        "compliant": "boolean",
        "last_bytes_moved": "Int64",
        "last_bytes_changed": "Int64",
        "last_error": "string",
        "operation": "string",
        "next_step": "string",
        "busy": "string",
        "source_state": "string",
    }
    assert list(frame["vm"]) == ["a", "b"]
    assert frame["last_bytes_changed"].isna().all()
    assert frame["last_error"].isna().tolist() == [True, False]
    assert frame["latest_created"].iloc[0].to_pydatetime() == T0


def test_restore_points_to_dataframe_has_the_documented_columns_and_dtypes() -> None:
    confirmed = RestorePoint(
        id="rp-000003",
        snapshot="s",
        created=T0,
        quiesced=True,
        bytes_moved=0,
        bytes_changed=0,
        confirmed=T0 + timedelta(hours=1),
    )
    frame = RestorePoints([point(1), confirmed]).to_dataframe()
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == {
        "id": "string",
        "snapshot": "string",
        "created": "datetime64[ns, UTC]",
        "quiesced": "bool",
        "bytes_moved": "int64",
        "bytes_changed": "int64",
        "verified": "bool",
        "confirmed": "datetime64[ns, UTC]",
        "current_as_of": "datetime64[ns, UTC]",
    }
    assert frame["verified"].tolist() == [True, False]
    assert frame["confirmed"].isna().tolist() == [True, False]
    assert frame["current_as_of"].iloc[1].to_pydatetime() == T0 + timedelta(hours=1)


def test_run_records_to_dataframe_has_the_documented_columns_and_dtypes() -> None:
    frame = RunRecords([record("a", 0), record("a", 10, ok=False, error="lost")]).to_dataframe()
    assert {name: str(dtype) for name, dtype in frame.dtypes.items()} == {
        "vm": "string",
        "protection": "string",
        "policy": "string",
        "started": "datetime64[ns, UTC]",
        "finished": "datetime64[ns, UTC]",
        "duration_seconds": "float64",
        "ok": "bool",
        "summary": "string",
        "error": "string",
    }
    assert frame["duration_seconds"].tolist() == [30.0, 30.0]
    assert frame["ok"].tolist() == [True, False]


def test_an_empty_collection_still_has_its_columns() -> None:
    frame = RestorePoints().to_dataframe()
    assert len(frame) == 0
    assert dict(frame.dtypes.items())["created"] == "datetime64[ns, UTC]"
    assert "RestorePoints: 0 restore points" in RestorePoints()._repr_html_()


def test_the_collections_still_compare_equal_to_plain_tuples_and_lists() -> None:
    assert RestorePoints([point(1)]) == (point(1),)
    assert StatusList() == ()
    assert RunRecords([record("a", 0)]) == [record("a", 0)]


def test_without_the_notebook_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    for call in (lambda: RestorePoints([point(1)]).to_dataframe(), lambda: plot_rpo([point(1)])):
        with pytest.raises(MissingExtra) as caught:
            call()
        assert caught.value.extra == "notebook"
        assert "pip install 'vsphere-replicator[notebook]'" in str(caught.value)
        assert isinstance(caught.value, ImportError)


def test_rpo_from_restore_points_grows_with_the_clock_and_drops_at_each_point() -> None:
    samples = rpo_series([point(0), point(1), point(3)], until=T0 + timedelta(minutes=35))
    assert samples == (
        RPOSample(T0, 0.0),
        RPOSample(T0 + timedelta(minutes=10), 600.0),
        RPOSample(T0 + timedelta(minutes=10), 0.0),
        RPOSample(T0 + timedelta(minutes=30), 1200.0),
        RPOSample(T0 + timedelta(minutes=30), 0.0),
        RPOSample(T0 + timedelta(minutes=35), 300.0),
    )


def test_rpo_from_run_records_counts_from_each_cycles_start_and_ignores_failures() -> None:
    records = [record("a", 0), record("a", 10, ok=False, error="lost"), record("a", 20)]
    samples = rpo_series(records)
    assert [(s.at - T0, s.rpo_seconds) for s in samples] == [
        (timedelta(seconds=30), 30.0),  # data of minute 0 lands at 0:30
        (timedelta(minutes=20, seconds=30), 1230.0),  # the failed cycle changed nothing
        (timedelta(minutes=20, seconds=30), 30.0),
    ]


def test_rpo_series_refuses_what_it_cannot_read() -> None:
    with pytest.raises(InvalidInput, match="RestorePoint or RunRecord"):
        rpo_series([status("a")])  # type: ignore[arg-type]  # the wrong kind of item, on purpose


def test_plot_rpo_draws_the_sawtooth_and_the_target_line() -> None:
    figure = plot_rpo(
        [point(0), point(1)], target_rpo=timedelta(minutes=15), until=T0 + timedelta(minutes=20)
    )
    axes = figure.axes[0]
    rpo, target = axes.get_lines()
    assert list(rpo.get_ydata()) == [0.0, 600.0, 0.0, 600.0]
    assert list(target.get_ydata()) == [900.0, 900.0]
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["RPO", "target RPO"]
    png = io.BytesIO()
    figure.savefig(png, format="png")
    assert png.getvalue().startswith(b"\x89PNG")


def test_plot_bytes_per_cycle_draws_changed_and_moved_per_point() -> None:
    mixed: list[Any] = [point(1, moved=2 << 20), cycle("a")]
    figure = plot_bytes_per_cycle(mixed)
    axes = figure.axes[0]
    heights = [bar.get_height() for bar in axes.patches]
    assert heights == [2.00390625, 3.0, 2.0, 2.0]  # changed (MiB) for both, then moved for both
    assert [t.get_text() for t in axes.get_xticklabels()] == ["rp-000001", "rp-000003"]


def test_progress_counts_bytes_with_rate_in_a_terminal() -> None:
    out = io.StringIO()
    with progress("replicate vm", file=out, mininterval=0) as bar:
        for done in (0, 4 << 20, 8 << 20):
            bar(done, 8 << 20)
        assert bar.bar.n == 8 << 20
        assert bar.bar.total == 8 << 20
    text = out.getvalue()
    assert "replicate vm" in text
    assert "8.00M/8.00M" in text
    assert "B/s" in text


def test_progress_restarts_for_each_pass_and_reads_percentages() -> None:
    out = io.StringIO()
    with progress("failback vm", file=out, mininterval=0) as bar:
        bar(1000, 1000)
        bar(10, 1000)  # the next disk of the reverse copy
        assert (bar.bar.n, bar.bar.total) == (10, 1000)
        bar(20, 2000)
        assert (bar.bar.n, bar.bar.total) == (20, 2000)
    with progress("protect vm", file=out, mininterval=0) as clone:
        for percent in (0, 40, 100):
            clone.percent(percent)
        assert (clone.bar.n, clone.bar.total, clone.bar.unit) == (100, 100, "%")


def test_in_ipython_a_returned_figure_shows_as_a_png_without_matplotlib_inline() -> None:
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        figure = plot_bytes_per_cycle([point(1)])
        assert shell.display_formatter is not None
        data, _ = shell.display_formatter.format(figure)  # type: ignore[no-untyped-call]  # IPython: untyped
        assert data["image/png"][:4] in (b"\x89PNG", "iVBO")  # bytes, or base64 text of them
    finally:
        InteractiveShell.clear_instance()
