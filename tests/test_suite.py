import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from clbench.errors import UserError
from clbench.plugins import Plugins, make_plugin_manager
from clbench.suite import load_suite
from clbench.testing import TINY_STREAM, tiny_suite, write_suite


def write(tmp_path, data, name="suite.yaml"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def error_of(tmp_path, data, plugins) -> str:
    path = write(tmp_path, data)
    with pytest.raises(UserError) as info:
        load_suite(path, plugins)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_grid_expands_lists_under_method_keys(tmp_path, plugins):
    suite = tiny_suite(["zeroshot", {"name": "finetune", "loss": ["contrastive", "ce"], "template": [0, 1]}], seeds=[0, 1, 2])
    cells = load_suite(write(tmp_path, suite), plugins).cells
    assert len(cells) == (1 + 4) * 3
    variants = {c.variant for c in cells}
    assert "finetune (loss=ce, template=1)" in variants and "zeroshot" in variants


def test_cell_id_is_stable_and_depends_on_resolved_config(tmp_path, plugins):
    a = load_suite(write(tmp_path, tiny_suite(["finetune"]), "a.yaml"), plugins).cells[0]
    # writing a default explicitly resolves to the same config, so the same cell
    b = load_suite(write(tmp_path, tiny_suite([{"name": "finetune", "loss": "contrastive"}]), "b.yaml"), plugins).cells[0]
    c = load_suite(write(tmp_path, tiny_suite([{"name": "finetune", "loss": "ce"}]), "c.yaml"), plugins).cells[0]
    assert a.cell_id == b.cell_id != c.cell_id
    assert a.config["params"] == {"loss": "contrastive", "template": 0, "freeze_text": False}
    assert a.config["train"]["lr"] == 1e-4 and a.config["train"]["optimizer"] == "adamw"


def test_per_method_train_override(tmp_path, plugins):
    suite = tiny_suite([{"name": "finetune", "train": {"lr": [1e-4, 1e-3]}}])
    cells = load_suite(write(tmp_path, suite), plugins).cells
    assert sorted(c.config["train"]["lr"] for c in cells) == [1e-4, 1e-3]
    assert all(c.config["train"]["batch_size"] == 32 for c in cells)


def test_include_merges_base_and_this_file_wins(tmp_path, plugins):
    write(tmp_path, tiny_suite(["zeroshot"], seeds=[0, 1], name="base"), "base.yaml")
    path = write(tmp_path, {"include": "base.yaml", "name": "child", "train": {"lr": 0.5}})
    suite = load_suite(path, plugins)
    assert suite.name == "child" and len(suite.cells) == 2
    assert suite.cells[0].config["train"]["lr"] == 0.5 and suite.cells[0].config["train"]["batch_size"] == 32


def test_circular_include(tmp_path, plugins):
    write(tmp_path, {"include": "b.yaml"}, "a.yaml")
    write(tmp_path, {"include": "a.yaml"}, "b.yaml")
    with pytest.raises(UserError, match="circular include"):
        load_suite(tmp_path / "a.yaml", plugins)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s["methods"].append("finetnue"), "methods[1].name: unknown method 'finetnue' (did you mean 'finetune'?)"),
        (lambda s: s.update(methds=["zeroshot"]), "methds: unknown key (did you mean 'methods'?)"),
        (lambda s: s["train"].update(lr=-1), "train.lr: Input should be greater than 0"),
        (lambda s: s["train"].update(epochs="two"), "train.epochs: Input should be a valid integer"),
        (lambda s: s["train"].update(lr=float("inf")), "train.lr: Input should be a finite number"),
        (lambda s: s["methods"].append({"name": "er", "replay_ratio": float("inf")}), "methods[1].replay_ratio: Input should be a finite number"),
        (lambda s: s["methods"].append({"name": "lwf", "distill_weight": float("inf")}), "methods[1].distill_weight: Input should be a finite number"),
        (lambda s: s["train"].update(batchsize=3), "train.batchsize: unknown key (did you mean 'batch_size'?)"),
        (lambda s: s.update(methods=[]), "methods: must be a non-empty list"),
        (lambda s: s["methods"].append({"name": "finetune", "loss": []}), "methods[1].loss: an empty list makes an empty grid"),
        (lambda s: s["methods"].append({"name": "finetune", "loss": "mse"}), "methods[1].loss: Input should be 'contrastive' or 'ce'"),
        (lambda s: s["methods"].append({"name": "finetune", "los": "ce"}), "methods[1].los: unknown key (did you mean 'loss'?)"),
        (lambda s: s.update(seeds=[0, 0]), "seeds: seed 0 is listed twice"),
        (lambda s: s.update(seeds=[]), "seeds: must be a non-empty list of integers"),
        (lambda s: s["streams"][0].update(dataset="cifar"), "streams[0].dataset: unknown dataset 'cifar'"),
        (lambda s: s["streams"][0].update(steps=0), "streams[0].steps: Input should be greater than 0"),
        (lambda s: s["streams"][0].update(steps=7), "streams[0].steps: 7 steps but the stream has only 6 classes; use at most 6"),
        (lambda s: s["streams"][0].update(holdout_classes=6), "streams[0].holdout_classes: 6 leaves no class of the 6"),
        (lambda s: s["streams"][0].update(holdout_classes=[0, 6]), "streams[0].holdout_classes: class 6 is not one of the dataset's 6 classes (0..5)"),
        (lambda s: s["streams"][0].update(holdout_classes=[2, 2]), "streams[0].holdout_classes: Value error, class 2 is listed twice"),
        (lambda s: s["streams"][0].update(holdout_classes=[True, 1]), "streams[0].holdout_classes: Value error, must be a count of classes (an integer >= 0) or a list of class ids (integers >= 0), not [True, 1]"),
        (lambda s: s["streams"][0].update(holdout_classes=[-1]), "streams[0].holdout_classes: Value error, must be a count of classes (an integer >= 0) or a list of class ids (integers >= 0), not [-1]"),
        (lambda s: s["streams"][0].update(holdout_classes=[]), "streams[0].holdout_classes: Value error, an empty list keeps no control set"),
        (lambda s: s["streams"][0].update(holdout_classes=list(range(6))), "streams[0].holdout_classes: [0, 1, 2, 3, 4, 5] leaves no class of the 6"),
        (lambda s: s["methods"].append({"name": "er", "buffer": {"size": -3}}), "methods[1].buffer.size: Input should be greater than or equal to 0"),
        (lambda s: s["methods"].append({"name": "er", "buffer": {"size": 3, "fraction": 0.1}}), "methods[1].buffer: Value error, give exactly one of size, per_class, fraction"),
        (lambda s: s["streams"][0].update(num_clases=5), "streams[0].num_clases: unknown key (did you mean 'num_classes'?)"),
        (lambda s: s["streams"][0].update(num_classes=1000), "streams[0].num_classes: Input should be less than or equal to 70"),
        (lambda s: s.update(executor="slrum"), "executor: unknown executor 'slrum'"),
        (lambda s: s.update(executor={"name": "ray", "num_gpu": 1}), "executor.num_gpu: unknown key (did you mean 'num_gpus'?)"),
        (lambda s: s.update(executor={"num_gpus": 1}), "executor: a mapping needs 'name'"),
        (lambda s: s.update(executor={"name": "slurm", "time_min": 0}), "executor.time_min: Input should be greater than or equal to 1"),
        (lambda s: s.update(executor={"name": "local", "workers": "many"}), "executor.workers: Input should be a valid integer"),
        (lambda s: s.update(report={"metrics": ["lst"]}), "report.metrics: unknown metric 'lst' (did you mean 'last'?)"),
        (lambda s: s.pop("streams"), "streams: missing"),
        (lambda s: s.update(include="nowhere.yaml"), "include: file 'nowhere.yaml' not found"),
        (lambda s: s["model"].update(arch="NoSuchArch-999"), "model.arch: unknown architecture 'NoSuchArch-999'"),
        (lambda s: s["model"].update(arch="ViT-B-61"), "model.arch: unknown architecture 'ViT-B-61' (did you mean 'ViT-B-16'?)"),
        (lambda s: s["methods"].append({"name": "icarl", "buffer": {"size": 0}}), "methods[1].buffer: Value error, icarl classifies by the mean"),
        # ranges that depend on the stream, known before any data is read (the tiny stream: 6 classes × 12 training
        # images in one domain = 72 images, the synthetic world's 4 prompt templates)
        (lambda s: s["methods"].append({"name": "finetune", "template": 4}),
         "methods[1].template: 4 but stream 'synthetic-ci3' (dataset synthetic) has 4 prompt templates; use 0..3"),
        (lambda s: s["methods"].append({"name": "finetune", "template": -1}), "methods[1].template: Input should be greater than or equal to 0"),
        (lambda s: (s["streams"][0].update(prompts={"templates": ["a {}."]}), s["methods"].append({"name": "er", "template": 3})),
         "methods[1].template: 3 but stream 'synthetic-ci3' (dataset synthetic) has 1 prompt template; use 0"),
        (lambda s: s["methods"].append({"name": "icarl", "template": 7}), "methods[1].template: 7 but stream"),
        (lambda s: s["methods"].append({"name": "er", "buffer": {"size": 100}}),
         "methods[1].buffer.size: a memory of 100 exemplars but stream 'synthetic-ci3' has only 72 training images; use a memory of at most 72"),
        (lambda s: s["methods"].append({"name": "dro_replay", "buffer": {"per_class": 13}}),
         "methods[1].buffer.per_class: a memory of 78 exemplars but stream 'synthetic-ci3' has only 72 training images"),
        (lambda s: s["methods"].append({"name": "gcl_replay", "replay_ratio": 0.01}),
         "methods[1].replay_ratio: 0.01 × batch_size 32 rounds to 0 replayed exemplars per step"),
        (lambda s: s["streams"][0].update(domains=["sketchy"]), "streams[0].domains: unknown domain 'sketchy' for dataset 'synthetic'; it has clean"),
        (lambda s: s["streams"][0].update(domains=["clean", "clean"]), "streams[0].domains: domain 'clean' is listed twice"),
        (lambda s: s["streams"][0].update(scenario="domain_incremental", world_domains=["clean", "noisy"], steps=3),
         "streams[0].steps: a domain-incremental stream has one step per domain (2); drop 'steps'"),
        (lambda s: s["streams"].__setitem__(0, {"dataset": "cifar100", "scenario": "domain_incremental"}),
         "streams[0].scenario: dataset 'cifar100' has no domains; use class_incremental"),
        (lambda s: s["streams"].__setitem__(0, {"dataset": "domainnet", "domains": ["reel"]}),
         "streams[0].domains: unknown domain 'reel' for dataset 'domainnet' (did you mean 'real'?)"),
        (lambda s: s["streams"].__setitem__(0, {"dataset": "imagefolder", "path": "x", "templates": ["a {}."]}) or s["methods"].append({"name": "finetune", "template": 1}),
         "methods[1].template: 1 but stream 'imagefolder-ci1' (dataset imagefolder) has 1 prompt template; use 0"),
        (lambda s: s["streams"].__setitem__(0, {"dataset": "imagefolder", "root": "/data", "pth": "birds"}),
         "streams[0].pth: unknown key (did you mean 'path'?); known keys: by_domain, class_order, dataset, datasets, domains, holdout_classes, image_size, label_space, name, path, prompts, root, scenario, steps, templates, train, workers"),
    ],
)
def test_bad_suites_give_one_line_naming_the_key(tmp_path, plugins, mutate, expected):
    suite = tiny_suite(["zeroshot"])
    mutate(suite)
    message = error_of(tmp_path, suite, plugins)
    assert message.startswith(str(tmp_path / "suite.yaml") + ": ")
    assert expected in message


def test_yaml_syntax_error_names_line(tmp_path, plugins):
    message = error_of(tmp_path, "name: x\nmethods: [zeroshot\nstreams: []\n", plugins)
    assert message.startswith(f"{tmp_path / 'suite.yaml'}:3:")
    assert "YAML syntax error" in message


def test_duplicate_yaml_key_is_an_error(tmp_path, plugins):
    message = error_of(tmp_path, "methods: [zeroshot]\nmethods: [finetune]\n", plugins)
    assert "duplicate key 'methods'" in message


def test_unsafe_yaml_tags_are_refused(tmp_path, plugins):
    message = error_of(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\n", plugins)
    assert "YAML syntax error" in message


def test_missing_file(tmp_path, plugins):
    with pytest.raises(UserError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml", plugins)


SHARED_PLUGINS = Plugins(make_plugin_manager())


@settings(max_examples=40, deadline=None)
@given(
    losses=st.lists(st.sampled_from(["contrastive", "ce"]), min_size=1, max_size=2, unique=True),
    templates=st.lists(st.integers(0, 3), min_size=1, max_size=4, unique=True),
    lrs=st.lists(st.sampled_from([1e-5, 1e-4, 1e-3]), min_size=1, max_size=3, unique=True),
    seeds=st.lists(st.integers(0, 10**6), min_size=1, max_size=5, unique=True),
)
def test_grid_size_is_the_product_of_its_axes(tmp_path_factory, losses, templates, lrs, seeds):
    plugins = SHARED_PLUGINS
    entry = {"name": "finetune", "loss": losses, "template": templates, "train": {"lr": lrs}}
    path = write_suite(tmp_path_factory.mktemp("grid") / "s.yaml", tiny_suite(["zeroshot", entry], seeds=seeds))
    cells = load_suite(path, plugins).cells
    assert len(cells) == (1 + len(losses) * len(templates) * len(lrs)) * len(seeds)
    assert len({c.cell_id for c in cells}) == len(cells)


def test_architectures_known_without_importing_open_clip_are_open_clips():
    import open_clip

    from clbench.models import CONFIG_DIR  # noqa: F401 (registers clbench's tiny configs with open_clip)
    from clbench.suite import known_architectures

    assert known_architectures() == sorted(open_clip.list_models())


def test_a_method_entry_limited_to_some_streams(tmp_path, plugins):
    other = {**TINY_STREAM, "name": "two", "steps": 2}
    suite = tiny_suite(["zeroshot", {"name": "finetune", "loss": ["ce", "contrastive"], "streams": ["two"]}],
                       streams=[dict(TINY_STREAM), other])
    cells = load_suite(write(tmp_path, suite), plugins).cells
    assert sorted((c.method, c.stream_label) for c in cells) == [
        ("finetune", "two"), ("finetune", "two"), ("zeroshot", "synthetic-ci3"), ("zeroshot", "two")]
    assert {c.variant for c in cells if c.method == "finetune"} == {"finetune (loss=ce)", "finetune (loss=contrastive)"}
    suite["methods"][1]["streams"] = ["tow"]
    assert "methods[1].streams: unknown stream 'tow' (did you mean 'two'?)" in error_of(tmp_path, suite, plugins)
    suite["methods"][1]["streams"] = ["two", "two"]
    assert "methods[1].streams: stream 'two' is listed twice; each stream once" in error_of(tmp_path, suite, plugins)


def test_control_classes_are_a_set_their_order_changes_no_cell_id():
    from clbench.config import StreamConfig

    assert StreamConfig(dataset="synthetic", holdout_classes=[5, 0]).holdout_classes == [0, 5]
    assert StreamConfig(dataset="synthetic", holdout_classes=3).holdout_classes == 3  # a count stays a count
