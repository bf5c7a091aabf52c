"""Decode once (clbench/data/decoded_cache.py): a file-backed set decoded a single time into a uint8 file, bit-identical."""
import json
import multiprocessing
import os
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import clbench.data.files as files
from clbench.data.decoded_cache import DecodedImageSet, cached_dataset, cached_set
from clbench.data.files import FileImageSet, image_set_from_state
from clbench.data.imagefolder import build_imagefolder
from clbench.errors import UserError
from clbench.testing import TINY_MODEL, write_suite

SIZE = 16
REAL_DECODE = files.decode
CLASSES = ("red_apple", "blue_car", "green_pear")


def write_folder(root, per_split=(4, 2), classes=CLASSES):
    """An image folder of JPEGs of varied shapes (landscape and portrait, so resizing and cropping both act)."""
    rng = np.random.default_rng(0)
    for split, per in zip(("train", "test"), per_split):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per):
                h, w = (20, 28) if k % 2 else (26, 18)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., c % 3] = 220  # one strong channel per class
                Image.fromarray(pixels).save(folder / f"{k}.jpg", quality=90)
    return root


def build(root, **kw):
    return build_imagefolder(path=str(root), image_size=SIZE, workers=0, **kw)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder for the test; returns its ``decoded`` folder."""
    monkeypatch.setenv("CLBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "decoded"


@pytest.fixture
def decodes(monkeypatch):
    """Counts calls of ``files.decode`` (workers=0: every decode runs in this process)."""
    calls = []
    real = files.decode

    def counting(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(files, "decode", counting)
    return calls


def entries(folder, suffix):
    return sorted(folder.glob(f"*{suffix}")) if folder.is_dir() else []


def same_batches(a, b, **kw):
    """Every batch of ``a`` and ``b`` (images, labels, ids) equal, for one generator seed."""
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    left = list(a.batches(3, generator=ga, with_ids=True, **kw))
    right = list(b.batches(3, generator=gb, with_ids=True, **kw))
    assert len(left) == len(right) > 0
    for x, y in zip(left, right):
        assert all(torch.equal(u, v) for u, v in zip(x, y))
        assert x[0].dtype == y[0].dtype == torch.uint8


# --- the same images -----------------------------------------------------------------------

def test_cached_set_gives_the_source_images_labels_and_ids(tmp_path, cache):
    data = build(write_folder(tmp_path / "img"))
    cached = cached_dataset(data)
    train, test = cached.train, cached.test
    assert isinstance(train, DecodedImageSet) and isinstance(test, DecodedImageSet)
    assert torch.equal(train.ids, data.train.ids) and torch.equal(train.ids, torch.arange(12))  # __post_init__ kept
    assert torch.equal(test.ids, data.test.ids) and torch.equal(train.labels, data.train.labels)
    same_batches(train, data.train, shuffle=True)
    same_batches(test, data.test)
    index = torch.tensor([7, 0, 11, 3])
    assert torch.equal(train.load(index), data.train.load(index))
    sub, sub_src = train.subset(index), data.train.subset(index)
    same_batches(sub, sub_src, shuffle=True)
    assert torch.equal(sub.ids, torch.tensor([7, 0, 11, 3]))
    assert sub.file is train.file and sub.pixels is None  # a view of the same mapping, no pixel copy
    where, where_src = train.where(classes=[2, 0]), data.train.where(classes=[2, 0])
    same_batches(where, where_src, shuffle=True)
    joined, joined_src = where.concat(sub), where_src.concat(sub_src)
    assert isinstance(joined, DecodedImageSet) and joined.file is train.file
    same_batches(joined, joined_src, shuffle=True)
    # a decoded set joins with a plain one of its source's kind (a replay memory restored from a checkpoint)
    mixed = sub_src.concat(where)
    assert isinstance(mixed, FileImageSet) and mixed.paths == sub_src.paths + where_src.paths
    same_batches(mixed, sub_src.concat(where_src))
    same_batches(where.concat(sub_src), where_src.concat(sub_src))
    # accounting and keys are the source's
    assert train.stored_bytes() == data.train.stored_bytes() and sub.stored_bytes() == sub_src.stored_bytes()
    # keys name the pixels: the same rows of one entry give one key, computed without stat'ing the files again
    assert where.identity() == train.subset(where.rows).identity() != train.identity()
    assert where.identity() != train.subset(where.rows.flip(0)).identity()
    assert train.to("cpu") is train and len(entries(cache, ".u8")) == 2
    # a dataset copy (new prompts) numbers the same ids again and keeps the decoded sets
    again = replace(cached, templates=["a {}."])
    assert again.train is train and torch.equal(again.train.ids, torch.arange(12))


def test_a_second_build_maps_the_file_without_decoding(tmp_path, cache, decodes):
    root = write_folder(tmp_path / "img")
    first = cached_set(build(root).test)
    assert decodes == []  # wrapping decodes nothing: the first use does
    pixels = first.load(torch.arange(len(first)))
    assert len(decodes) == len(first) == 6
    decodes.clear()
    second = cached_set(build(root).test)
    assert torch.equal(second.load(torch.arange(6)), pixels) and list(second.batches(4))
    assert decodes == [] and second.file.key == first.file.key


def test_a_changed_file_gives_a_new_key(tmp_path, cache, decodes):
    root = write_folder(tmp_path / "img")
    before = cached_set(build(root).test)
    before.load(torch.arange(6))
    path = root / "test" / "blue_car" / "1.jpg"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same bytes, new mtime
    touched = cached_set(build(root).test)
    assert touched.file.key != before.file.key
    Image.new("RGB", (30, 20), (1, 2, 3)).save(path)  # new content and size
    rewritten = build(root).test
    changed = cached_set(rewritten)
    assert changed.file.key not in (before.file.key, touched.file.key)
    decodes.clear()
    assert torch.equal(changed.load(torch.arange(6)), rewritten.load(torch.arange(6)))
    assert len(decodes) == 6 + 6  # the new entry decoded once, the source once for comparison
    assert build(root, templates=["a {}."]).test.identity() == rewritten.identity()  # labels and prompts are no part of it
    # another picture of the same size with the old mtime put back (cp -p, rsync -a): the inode/ctime tell
    st = path.stat()
    other = tmp_path / "other.jpg"
    Image.new("RGB", (30, 20), (200, 100, 0)).save(other)
    other.write_bytes(other.read_bytes()[: st.st_size].ljust(st.st_size, b"\0"))
    os.replace(other, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    assert cached_set(build(root).test).file.key != changed.file.key


@pytest.mark.parametrize("damage", ["truncate", "sidecar", "shape", "no_sidecar", "zeroed"])
def test_a_corrupt_or_truncated_entry_is_rebuilt(tmp_path, cache, decodes, damage):
    root = write_folder(tmp_path / "img")
    source = build(root).train
    expected = cached_set(source).load(torch.arange(12))
    u8, = entries(cache, ".u8")
    sidecar = u8.with_suffix(".json")
    if damage == "truncate":
        u8.write_bytes(u8.read_bytes()[:1000])
    elif damage == "sidecar":
        sidecar.write_text("{not json")
    elif damage == "shape":
        sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "n": 13}))
    elif damage == "zeroed":  # same size, first half overwritten
        data = u8.read_bytes()
        u8.write_bytes(bytes(len(data) // 2) + data[len(data) // 2:])
    else:
        sidecar.unlink()  # killed between the rename and the marker
    decodes.clear()
    rebuilt = cached_set(build(root).train)
    assert torch.equal(rebuilt.load(torch.arange(12)), expected)
    assert len(decodes) == 12 and u8.stat().st_size == 12 * 3 * SIZE * SIZE
    assert json.loads(sidecar.read_text())["n"] == 12


def _boom_after(count):
    real = REAL_DECODE
    calls = []

    def decode(path, size):
        calls.append(path)
        if len(calls) > count:
            raise RuntimeError("interrupted")
        return real(path, size)

    return decode


def test_an_interrupted_write_leaves_nothing_a_reader_takes_as_complete(tmp_path, cache, monkeypatch):
    root = write_folder(tmp_path / "img", per_split=(40, 1))  # 120 images: two build batches
    monkeypatch.setattr(files, "decode", _boom_after(70))
    with pytest.raises(UserError, match="unreadable image .*RuntimeError: interrupted"):
        cached_set(build(root).train).load(torch.tensor([0]))
    assert sorted(p.suffix for p in cache.iterdir()) == [".lock"]  # no .u8, no sidecar, no temporary file
    monkeypatch.setattr(files, "decode", REAL_DECODE)
    assert torch.equal(cached_set(build(root).train).load(torch.arange(120)), build(root).train.load(torch.arange(120)))


def _killed_child(root, count):
    """Decode into the cache and die (no cleanup, as a kill -9 or a lost node) after ``count`` images."""
    real = files.decode
    calls = []

    def decode(path, size):
        calls.append(path)
        if len(calls) > count:
            os._exit(9)
        return real(path, size)

    torch.set_num_threads(1)  # as DataLoader workers do: a forked child runs no OpenMP team of its parent's
    files.decode = decode
    cached_set(build(root).train).load(torch.tensor([0]))


def test_a_killed_writer_leaves_a_temporary_file_that_is_never_read(tmp_path, cache, decodes):
    root = write_folder(tmp_path / "img", per_split=(40, 1))
    child = multiprocessing.get_context("fork").Process(target=_killed_child, args=(root, 70))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    leftovers = list(cache.glob("*.tmp-*"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 64 * 3 * SIZE * SIZE  # the first batch got written
    assert entries(cache, ".u8") == [] and entries(cache, ".json") == []
    again = cached_set(build(root).train)
    assert torch.equal(again.load(torch.arange(120)), build(root).train.load(torch.arange(120)))
    assert list(cache.glob("*.tmp-*")) == [] and len(entries(cache, ".u8")) == 1  # the dead writer's file cleared


def _racing_child(root, counter, barrier, out):
    real = files.decode

    def decode(path, size):
        with counter.get_lock():
            counter.value += 1
        time.sleep(0.01)
        return real(path, size)

    torch.set_num_threads(1)
    files.decode = decode
    data = cached_set(build(root).train)
    barrier.wait(60)
    out.put(data.load(torch.arange(len(data))).numpy().tobytes())


def test_two_processes_decode_an_entry_once(tmp_path, cache):
    root = write_folder(tmp_path / "img", per_split=(10, 1))
    ctx = multiprocessing.get_context("fork")
    counter, barrier, out = ctx.Value("i", 0), ctx.Barrier(2), ctx.Queue()
    children = [ctx.Process(target=_racing_child, args=(root, counter, barrier, out)) for _ in range(2)]
    for child in children:
        child.start()
    results = [out.get(timeout=120) for _ in children]
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0]
    assert counter.value == 30  # one decode of the 30 images: the second process waited and mapped the file
    assert results[0] == results[1] == build(root).train.load(torch.arange(30)).numpy().tobytes()


# --- when nothing is cached ------------------------------------------------------------------

def test_cache_off_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE_DIR", "off")
    data = build(write_folder(tmp_path / "img"))
    assert cached_set(data.train) is data.train and cached_dataset(data) is data


def test_size_policy(tmp_path, cache, monkeypatch):
    data = build(write_folder(tmp_path / "img"))
    monkeypatch.setenv("CLBENCH_DECODE_CACHE_GB", "5e-6")  # 5,000 bytes: the test split (6 x 768) fits, train (12) not
    test = cached_set(data.test)
    assert isinstance(test, DecodedImageSet) and cached_set(data.train) is data.train
    test.load(torch.tensor([0]))
    three = data.test.subset(torch.tensor([0, 1, 2]))
    assert cached_set(three) is three  # 4,608 bytes held: 2,304 more would pass the limit, so it streams
    monkeypatch.setenv("CLBENCH_DECODE_CACHE_GB", "1")
    assert isinstance(cached_set(three), DecodedImageSet)
    empty = data.test.subset(torch.tensor([], dtype=torch.long))
    assert cached_set(empty) is empty
    monkeypatch.setenv("CLBENCH_DECODE_CACHE_GB", "lots")
    with pytest.raises(UserError, match="CLBENCH_DECODE_CACHE_GB='lots'"):
        cached_set(data.test)


def test_an_unreadable_image_raises_the_same_one_line_error(tmp_path, cache):
    root = write_folder(tmp_path / "img")
    (root / "test" / "green_pear" / "1.jpg").write_bytes(b"not an image")
    source = build(root).test
    with pytest.raises(UserError) as plain:
        list(source.batches(4))
    with pytest.raises(UserError) as cached:
        list(cached_set(source).batches(4))
    assert str(cached.value) == str(plain.value) and "green_pear/1.jpg" in str(cached.value)
    assert "\n" not in str(cached.value) and entries(cache, ".u8") == []


# --- checkpoints and sequences --------------------------------------------------------------------

def test_state_restores_without_the_cache_folder(tmp_path, cache):
    data = cached_dataset(build(write_folder(tmp_path / "img")))
    memory = data.train.where(classes=[1]).concat(data.train.subset(torch.tensor([0, 11])))
    expected = memory.load(torch.arange(len(memory)))
    state = memory.state()
    assert state["kind"] == "files" and torch.equal(state["ids"], torch.tensor([4, 5, 6, 7, 0, 11]))
    shutil.rmtree(cache)
    restored = image_set_from_state(state)
    assert isinstance(restored, FileImageSet) and torch.equal(restored.load(torch.arange(6)), expected)
    assert torch.equal(restored.ids, memory.ids) and torch.equal(restored.labels, memory.labels)
    assert restored.stored_bytes() == memory.stored_bytes()


def test_dataset_sequence_of_decoded_parts(tmp_path, cache):
    from clbench.data.sequence import MergedImageSet, few_shot, merge_datasets

    a, b = build(write_folder(tmp_path / "a")), build(write_folder(tmp_path / "b", classes=("x", "y")))
    plain = merge_datasets([("a", few_shot(a, 2, 0)), ("b", b)], SIZE)
    fast = merge_datasets([("a", cached_dataset(few_shot(a, 2, 0))), ("b", cached_dataset(b))], SIZE)
    assert all(isinstance(p, DecodedImageSet) for p in fast.train.parts + fast.test.parts)
    assert len(fast.train.parts[0].file.source) == 6  # the few-shot images, not the whole training split
    assert torch.equal(fast.train.ids, plain.train.ids) and torch.equal(fast.train.labels, plain.train.labels)
    same_batches(fast.train, plain.train, shuffle=True)
    same_batches(fast.test.where(domains=[1]), plain.test.where(domains=[1]), shuffle=True)
    assert fast.train.identity() is not None and fast.train.stored_bytes() == plain.train.stored_bytes()
    memory = fast.train.subset(torch.tensor([1, 7, 9]))
    restored = image_set_from_state(memory.state())
    assert isinstance(restored, MergedImageSet) and torch.equal(restored.load(torch.arange(3)), memory.load(torch.arange(3)))


def test_huggingface_split(tmp_path, cache):
    pytest.importorskip("datasets")
    import clbench.data.hf_sets as hfs

    from .test_hf_sets import write_hf

    folder = write_hf(tmp_path / "fruit")
    data = hfs.build_huggingface(path=str(folder), image_size=SIZE, workers=0)
    cached = cached_dataset(data)
    assert isinstance(cached.train, DecodedImageSet)
    same_batches(cached.train, data.train, shuffle=True)
    assert cached.train.state()["kind"] == "huggingface" and cached.train.stored_bytes() == data.train.stored_bytes()
    again = hfs.build_huggingface(path=str(folder), image_size=SIZE, workers=0)
    assert again.train.identity() == data.train.identity() != again.test.identity()
    assert again.train.subset(torch.tensor([1, 0])).identity() != again.train.subset(torch.tensor([0, 1])).identity()


# --- a whole cell ------------------------------------------------------------------------------

def test_records_are_identical_with_and_without_the_cache(tmp_path, monkeypatch):
    from clbench.plugins import Plugins, make_plugin_manager
    from clbench.runner import run_cell
    from clbench.suite import load_suite

    write_folder(tmp_path / "img", per_split=(4, 2), classes=("a", "b", "c", "d"))
    stream = {"dataset": "imagefolder", "path": str(tmp_path / "img"), "steps": 2, "workers": 0}
    suite = {"name": "dc", "model": dict(TINY_MODEL), "streams": [stream], "methods": ["zeroshot", "finetune"], "seeds": [0],
             "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0}}
    plugins = Plugins(make_plugin_manager())
    cells = load_suite(write_suite(tmp_path / "s.yaml", suite), plugins).cells
    matrices = {}
    for where in ("off", str(tmp_path / "cache")):
        monkeypatch.setenv("CLBENCH_CACHE_DIR", where)
        records = [run_cell(cell, plugins) for cell in cells]
        assert [r["status"] for r in records] == ["done", "done"]
        matrices[where] = [(r["method"], r["acc_matrix"], r["buffer"]) for r in records]
    assert matrices["off"] == matrices[str(tmp_path / "cache")]
    assert len(entries(tmp_path / "cache" / "decoded", ".u8")) == 2  # train and test, shared by both cells


def test_stream_to_device_moves_decoded_sets_that_fit(tmp_path, cache, monkeypatch):
    import clbench.data.scenarios as scenarios

    data = cached_dataset(build(write_folder(tmp_path / "img")))
    stream = scenarios.build_stream(data, "class_incremental", 0, "s", steps=3)
    stream.experiences[2].test = stream.experiences[1].test  # one set shared by two experiences
    before = [(e.train, e.test) for e in stream.experiences]
    assert not scenarios.fits_on_device("cpu", 1)
    stream.to_device("cpu")  # a CPU never gets copies
    assert [(e.train, e.test) for e in stream.experiences] == before
    monkeypatch.setattr(scenarios, "fits_on_device", lambda device, nbytes: nbytes <= 2 * 3 * SIZE * SIZE)
    stream.to_device("meta")  # a device without memory of its own: only where the pixels went is checked
    moved = [(e.train, e.test) for e in stream.experiences]
    assert all(m[0] is b[0] for m, b in zip(moved, before))  # 4 training images each: more than fit, 2 test images fit
    assert all(m[1].pixels.device.type == "meta" and m[1].labels.device.type == "cpu" for m in moved)
    assert moved[2][1] is moved[1][1] and torch.equal(moved[1][1].ids, before[1][1].ids)
    assert moved[0][1].state()["paths"] == before[0][1].state()["paths"]
    assert moved[0][1].stored_bytes() == before[0][1].stored_bytes()
