"""Real dataset loaders on miniature copies in their exact on-disk formats."""
import json
import pickle

import pytest
import torch

from clbench.cli import main
from clbench.data.cifar import ICARL_ORDER, build_cifar100
from clbench.data.domainnet import DOMAINS, build_domainnet, verify_sha512_prefix
from clbench.data.files import FileImageSet, decode
from clbench.data.imagefolder import build_imagefolder
from clbench.data.imagenet import build_imagenet1k, build_imagenet100, read_list, subset_wnids
from clbench.data.scenarios import build_stream
from clbench.errors import UserError
from clbench.testing import TINY_MODEL, TINY_TRAIN, write_suite

from .miniature import write_cifar100, write_domainnet, write_imagefolder, write_imagenet

IMAGENET_WNIDS = ["n01440764", "n01443537", "n02123159", "n04589890"]  # tench, goldfish, tiger cat, window screen


def run_suite(tmp_path, capsys, stream, name="s"):
    suite = {"name": name, "model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "streams": [stream],
             "methods": ["zeroshot", "finetune"], "seeds": [0]}
    path = write_suite(tmp_path / f"{name}.yaml", suite)
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--results", str(tmp_path / name)])
    out, err = capsys.readouterr()
    records = [json.loads(p.read_text()) for p in (tmp_path / name / "records").glob("*.json")] if (tmp_path / name / "records").is_dir() else []
    return info.value.code, err, records


# --- CIFAR-100 ---------------------------------------------------------------

def test_cifar100_loads_names_images_and_named_orders(tmp_path):
    write_cifar100(tmp_path)
    data = build_cifar100(root=str(tmp_path))
    assert data.num_classes == 100 and data.class_names[1] == "aquarium fish" and data.class_names[41] == "lawn mower"
    assert data.raw_class_names[1] == "aquarium_fish" and data.raw_class_names[41] == "lawn_mower"
    assert data.train.images.shape == (200, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.order_names() == ["seeded", "icarl", "pycil"]
    assert data.class_order(0, "icarl")[:5] == [87, 0, 52, 58, 44] and data.class_order(0, "icarl") == ICARL_ORDER
    assert data.class_order(0, "pycil")[:3] == [68, 56, 78]
    assert data.class_order(1993) != ICARL_ORDER  # seed 1993 is a seed like any other: seeded by default
    stream = build_stream(data, "class_incremental", 1993, "c", steps=10, class_order="icarl")
    assert stream.experiences[0].classes == ICARL_ORDER[:10]


def test_cifar100_pixels_follow_the_pickle_layout(tmp_path):
    folder = write_cifar100(tmp_path)
    with open(folder / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    data = build_cifar100(root=str(tmp_path))
    row = raw["data"][5]  # 1024 red, then 1024 green, then 1024 blue values, row-major
    assert data.train.images[5, 1, 0, 3].item() == row[1024 + 3]
    assert data.train.images[5, 2, 31, 31].item() == row[3071]


def test_cifar100_stream_runs_through_clbench_run(tmp_path, capsys):
    write_cifar100(tmp_path)
    code, err, records = run_suite(tmp_path, capsys, {"dataset": "cifar100", "steps": 2, "root": str(tmp_path)})
    assert code == 0, err
    assert len(records) == 2 and all(r["status"] == "done" and len(r["acc_matrix"]) == 2 for r in records)


def test_cifar100_refuses_a_pickle_that_runs_code(tmp_path):
    folder = write_cifar100(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": Evil()}, f)
    with pytest.raises(UserError, match="refusing to load builtins.print"):
        build_cifar100(root=str(tmp_path))


def test_cifar100_missing(tmp_path):
    with pytest.raises(UserError, match=r"dataset 'cifar100' not found: missing .*cifar-100-python/train; set 'download: true'"):
        build_cifar100(root=str(tmp_path))


# --- ImageNet ------------------------------------------------------------------

def test_imagenet_lists():
    wnids = read_list("imagenet1k_wnids.txt")
    assert len(wnids) == 1000 == len(set(wnids)) and wnids == sorted(wnids) and wnids[0] == "n01440764"
    assert wnids[-1] == "n15075141"
    for name in ("podnet", "ucir"):
        subset = subset_wnids(name)
        assert len(subset) == 100 == len(set(subset)) and set(subset) <= set(wnids)


def test_imagenet1k_tree_with_clip_names(tmp_path):
    write_imagenet(tmp_path, IMAGENET_WNIDS)
    data = build_imagenet1k(root=str(tmp_path), image_size=32, workers=0)
    assert data.class_names == ["tench", "goldfish", "tiger cat", "window screen"]
    assert len(data.templates) == 80 and data.templates[0] == "a bad photo of a {}."
    assert len(data.train) == 8 and len(data.test) == 4
    images, labels = next(data.train.batches(8))
    assert images.shape == (8, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_imagenet100_uses_the_published_subset(tmp_path):
    subset = subset_wnids("ucir")
    write_imagenet(tmp_path, subset[:3] + ["n15075141"])  # a class outside the subset is ignored...
    with pytest.raises(UserError, match=f"{subset[3]}: class folder missing"):  # ...and every subset class is required
        build_imagenet100(root=str(tmp_path), subset="ucir", image_size=32, workers=0)


def test_imagenet100_subset_reads_its_classes_and_order(tmp_path):
    write_imagenet(tmp_path, subset_wnids("podnet"), per_split=(1, 1))
    data = build_imagenet100(root=str(tmp_path), subset="podnet", image_size=16, workers=0)
    assert data.class_names[:2] == ["tench", "goldfish"] and data.order_names() == ["seeded", "podnet"]
    assert build_stream(data, "class_incremental", 0, "i", steps=10, class_order="podnet").experiences[0].classes[:3] == [68, 56, 78]
    with pytest.raises(UserError, match="class_order: dataset 'imagenet100' has no order 'ucir'; known: seeded, podnet"):
        build_stream(data, "class_incremental", 0, "i", steps=10, class_order="ucir")


def test_imagenet_stream_runs_through_clbench_run(tmp_path, capsys):
    write_imagenet(tmp_path, IMAGENET_WNIDS)
    code, err, records = run_suite(tmp_path, capsys, {"dataset": "imagenet1k", "steps": 2, "root": str(tmp_path), "workers": 0})
    assert code == 0, err
    assert {len(r["acc_matrix"]) for r in records} == {2} and all(r["status"] == "done" for r in records)


def test_empty_class_folder_is_an_error(tmp_path):
    base = write_imagenet(tmp_path, IMAGENET_WNIDS)
    for f in (base / "val" / IMAGENET_WNIDS[1]).iterdir():
        f.unlink()
    with pytest.raises(UserError, match=f"class '{IMAGENET_WNIDS[1]}' has no images"):
        build_imagenet1k(root=str(tmp_path), workers=0)


def test_missing_imagenet_says_where_it_looked(tmp_path):
    with pytest.raises(UserError, match=f"dataset 'imagenet' not found at {tmp_path / 'imagenet'}"):
        build_imagenet1k(root=str(tmp_path))


# --- DomainNet -----------------------------------------------------------------

def test_domainnet_split_files(tmp_path):
    write_domainnet(tmp_path, DOMAINS)
    data = build_domainnet(root=str(tmp_path), image_size=32, workers=0)
    assert data.class_names == ["aircraft carrier", "zebra"] and data.domain_names == list(DOMAINS)
    assert len(data.train) == 6 * 2 * 2 and len(data.test) == 6 * 2
    stream = build_stream(data, "domain_incremental", 0, "d")
    assert [e.domain for e in stream.experiences] == list(DOMAINS)


def test_domainnet_stream_runs_through_clbench_run(tmp_path, capsys):
    write_domainnet(tmp_path, ["clipart", "sketch"])
    stream = {"dataset": "domainnet", "scenario": "domain_incremental", "root": str(tmp_path), "workers": 0,
              "load_domains": ["clipart", "sketch"]}
    code, err, records = run_suite(tmp_path, capsys, stream)
    assert code == 0, err
    assert all(r["status"] == "done" and [e["domain"] for e in r["experiences"]] == ["clipart", "sketch"] for r in records)


@pytest.mark.parametrize(
    "line, message",
    [
        ("clipart/zebra/x.jpg", r"clipart_train.txt:2: malformed line 'clipart/zebra/x.jpg'"),
        ("clipart/../../../etc/passwd 1", r"clipart_train.txt:2: path 'clipart/../../../etc/passwd' is not 'clipart/<class>/<file>'|escapes"),
        ("clipart/zebra/missing.jpg 1", r"clipart_train.txt:2: image .* not found"),
        ("clipart/aircraft_carrier/clipart_000_train000000.jpg 1", r"label 1 is 'zebra' elsewhere but 'aircraft_carrier' here"),
    ],
)
def test_domainnet_bad_split_lines(tmp_path, line, message):
    base = write_domainnet(tmp_path, ["clipart"], classes=("aircraft_carrier", "zebra"), per_split=(1, 1))
    split = base / "clipart_train.txt"
    lines = split.read_text().splitlines()
    split.write_text(lines[1] + "\n" + line + "\n" if "elsewhere" in message else lines[0] + "\n" + line + "\n")
    with pytest.raises(UserError, match=message):
        build_domainnet(root=str(tmp_path), load_domains=["clipart"], workers=0)


def test_domainnet_accepts_symlinked_files_and_folders_but_no_path_out_of_its_tree(tmp_path):
    # clusters assemble data trees from symlinks into shared storage: a symlinked domain folder and a symlinked
    # image both load; a split-file entry that climbs out of the tree with '..' is still refused
    shared = tmp_path / "shared"
    base = write_domainnet(shared, ["clipart"], per_split=(1, 1))
    tree = tmp_path / "tree" / "domainnet"
    tree.mkdir(parents=True)
    for item in base.iterdir():
        (tree / item.name).symlink_to(item)  # clipart/ and the split files are links
    image = next((base / "clipart" / "zebra").glob("*train*.jpg"))
    (tmp_path / "elsewhere.jpg").write_bytes(image.read_bytes())
    image.unlink()
    image.symlink_to(tmp_path / "elsewhere.jpg")  # an image that is itself a link out of the tree
    data = build_domainnet(root=str(tmp_path / "tree"), load_domains=["clipart"], workers=0)
    assert len(data.train) == 2 and data.train.load(torch.arange(2)).shape == (2, 3, 224, 224)
    train = tree / "clipart_train.txt"
    train.unlink()
    train.write_text("clipart/../../../elsewhere.jpg 0\n")
    with pytest.raises(UserError, match=r"clipart_train.txt:1: path 'clipart/\.\./\.\./\.\./elsewhere.jpg'"):
        build_domainnet(root=str(tmp_path / "tree"), load_domains=["clipart"], workers=0)
    from clbench.data.root import inside

    assert inside(tree, "clipart/zebra/x.jpg", "w") == tree / "clipart" / "zebra" / "x.jpg"
    for bad in ("../elsewhere.jpg", "clipart/../../elsewhere.jpg", "/etc/passwd"):
        with pytest.raises(UserError, match="escapes the dataset folder|is absolute"):
            inside(tree, bad, "w")


def test_domainnet_missing_split_file(tmp_path):
    base = write_domainnet(tmp_path, ["clipart"])
    (base / "clipart_test.txt").unlink()
    with pytest.raises(UserError, match=r"clipart_test.txt: split file missing; set 'download: true'"):
        build_domainnet(root=str(tmp_path), load_domains=["clipart"])


def test_checksum_prefix_verification(tmp_path):
    import hashlib

    f = tmp_path / "a.zip"
    f.write_bytes(b"hello")
    verify_sha512_prefix(f, hashlib.sha512(b"hello").hexdigest()[:40])
    with pytest.raises(UserError, match="checksum mismatch"):
        verify_sha512_prefix(f, "0" * 40)
    assert not f.exists()


# --- imagefolder and decoding ---------------------------------------------------

def test_imagefolder(tmp_path):
    write_imagefolder(tmp_path / "mine")
    data = build_imagefolder(path=str(tmp_path / "mine"), image_size=32, workers=0)
    assert data.class_names == ["blue car", "red apple"] and len(data.train) == 6 and len(data.test) == 4
    write_imagefolder(tmp_path / "dom", domains=["photo", "art"])
    dom = build_imagefolder(path=str(tmp_path / "dom"), by_domain=True, image_size=32, workers=0)
    assert dom.domain_names == ["art", "photo"] and torch.bincount(dom.train.domains).tolist() == [6, 6]
    # the universal data-root key: a relative path is read below it; an absolute path ignores it
    below = build_imagefolder(root=str(tmp_path), path="mine", image_size=32, workers=0)
    assert below.class_names == data.class_names and len(below.train) == 6
    assert len(build_imagefolder(root="/nowhere", path=str(tmp_path / "mine"), image_size=32, workers=0).test) == 4
    with pytest.raises(UserError, match="imagefolder: path '/nowhere/mine' not found"):
        build_imagefolder(root="/nowhere", path="mine")


def test_imagefolder_stream_runs_through_clbench_run(tmp_path, capsys):
    write_imagefolder(tmp_path / "mine", classes=("a", "b", "c", "d"))
    code, err, records = run_suite(tmp_path, capsys, {"dataset": "imagefolder", "root": str(tmp_path), "path": "mine", "steps": 2, "workers": 0})
    assert code == 0, err
    assert len(records) == 2 and all(r["status"] == "done" for r in records)
    assert records[0]["config"]["stream"]["runtime_options"] == {"root": str(tmp_path), "path": "mine", "workers": 0}


def test_unreadable_image_stops_the_run_with_one_line_and_writes_nothing(tmp_path, capsys):
    root = write_imagefolder(tmp_path / "mine", classes=("a", "b"))
    (root / "train" / "a" / "0.png").write_bytes(b"not an image")
    code, err, records = run_suite(tmp_path, capsys, {"dataset": "imagefolder", "path": str(root), "steps": 2, "workers": 0})
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and err.endswith(errors[0] + "\n")
    assert "unreadable image" in errors[0] and "0.png" in errors[0]
    # zeroshot never reads training images and finished; the cell that hit the file left no record
    assert [r["method"] for r in records] == ["zeroshot"] and records[0]["status"] == "done"


def test_cell_identity_does_not_depend_on_where_data_lives(tmp_path, plugins):
    from clbench.suite import load_suite

    ids = []
    for root in ("/data/a", "/mnt/b"):
        suite = {"streams": [{"dataset": "cifar100", "root": root, "steps": 2}], "methods": ["zeroshot"]}
        ids.append(load_suite(write_suite(tmp_path / "s.yaml", suite), plugins).cells[0].cell_id)
    assert ids[0] == ids[1]


def test_decode_resizes_the_shorter_side_and_centre_crops(tmp_path):
    from torchvision.io import write_png

    img = torch.zeros(3, 20, 40, dtype=torch.uint8)
    img[0, :, 10:30] = 255  # a red band in the middle third... of the width
    write_png(img, str(tmp_path / "x.png"))
    out = decode(str(tmp_path / "x.png"), 10)
    assert out.shape == (3, 10, 10) and out.dtype == torch.uint8
    assert out[0, 5, 5] > 200 and out[0, 5, 0] > 200  # the centre crop sees only the band


def test_worker_processes_give_the_same_batches(tmp_path):
    root = write_imagefolder(tmp_path / "mine", per_split=(4, 1))
    data = build_imagefolder(path=str(root), image_size=16, workers=0)
    serial = [x for x, _ in data.train.batches(3)]
    parallel = FileImageSet(data.train.paths, data.train.labels, None, size=16, workers=2)
    assert all(torch.equal(a, b) for a, b in zip(serial, [x for x, _ in parallel.batches(3)]))
