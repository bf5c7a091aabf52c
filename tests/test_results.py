import os
import stat

import pytest

from clbench.results import ResultStore, atomic_write_text


def test_write_read_round_trip(tmp_path):
    store = ResultStore(tmp_path)
    store.write({"cell_id": "abc", "status": "done", "metrics": {"last": 0.5}})
    assert store.read("abc")["metrics"]["last"] == 0.5
    assert store.is_done("abc") and store.status("nope") is None
    assert [r["cell_id"] for r in store.records()] == ["abc"]


def test_failed_replace_keeps_the_old_record_and_leaves_no_temp_file(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.write({"cell_id": "abc", "status": "done", "n": 1})

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.write({"cell_id": "abc", "status": "done", "n": 2})
    monkeypatch.undo()
    assert store.read("abc")["n"] == 1
    assert sorted(p.name for p in store.records_dir.iterdir()) == ["abc.json"]


def test_nan_is_refused_before_anything_is_written(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(ValueError):
        store.write({"cell_id": "x", "value": float("nan")})
    assert not store.path("x").exists()


def test_truncated_record_counts_as_missing(tmp_path):
    store = ResultStore(tmp_path)
    store.records_dir.mkdir(parents=True)
    store.path("half").write_text('{"cell_id": "half", "stat')
    assert store.read("half") is None and not store.is_done("half")
    assert list(store.records()) == []


def test_atomic_write_creates_parents(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "hi")
    assert (tmp_path / "a" / "b.txt").read_text() == "hi"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_get_the_permissions_open_would_give(tmp_path, umask, mode):
    # a results folder shared by a group, or a report served by a web server, must be readable as the umask says,
    # not owner-only as a temp file is made
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "out" / "record.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "record.json").stat().st_mode) == mode
