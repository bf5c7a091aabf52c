"""A suite means exactly what ``yaml.safe_load`` says, plus the refusal of a key written twice.

Every YAML feature researchers use to avoid repetition (anchors, aliases, merge keys,
lists of merges, overriding a merged key, ``x-`` extension keys holding anchors) gives
the same cells as the same suite written out in full.
"""
import pytest
import yaml

from clbench.errors import UserError
from clbench.suite import load_suite
from clbench.suite_yaml import load_raw, read_yaml
from clbench.testing import tiny_suite, write_suite

DOCUMENTS = {
    "alias": "a: &a {x: 1, y: [1, 2]}\nb: *a\n",
    "merge": "a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  y: 3\n",
    "merge list": "a: &a {x: 1}\nb: &b {z: 2, x: 5}\nc:\n  <<: [*a, *b]\n",
    "merge in flow": "a: &a {x: 1}\nb: {<<: *a, x: 2}\n",
    "yaml 1.1 scalars": "lr: 1e-5\nlr2: 1.0e-5\nf: yes\ng: off\nn: ~\nt: !!str 12\nh: 0x1F\no: 017\n",
    "block scalars": "d: |\n  two\n  lines\ne: >\n  folded\n  text\n",
    "quoted and unicode keys": "'a: b': 1\n\"ü名\": 2\n? complex\n: 3\n",
    "byte order mark": "\ufeffname: x\n",
    "comments and styles": "# c\nm: [a, {b: 1}]  # trailing\nn:\n  - a\n  - b: 1\n",
}


@pytest.mark.parametrize("text", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_a_suite_file_reads_as_yaml_safe_load_reads_it(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    assert read_yaml(path) == yaml.safe_load(text)


ANCHORED = """
x-train: &fast {epochs: 1, batch_size: 32, lr: 1e-4, weight_decay: 0.0}
x-stream: &tiny {dataset: synthetic, steps: 3, num_classes: 6, train_per_class: 12, test_per_class: 6, world_domains: [clean]}
x-replay: &replay {buffer: {size: 12}, replay_ratio: 0.5}
name: tiny
model: {arch: clbench-tiny-32, pretrained: null}
train: *fast
streams:
  - *tiny
  - {<<: *tiny, name: tiny-ci2, steps: 2}
methods:
  - {name: er, <<: *replay}
  - {name: dro_replay, <<: *replay, replay_ratio: 0.25}
  - {name: gcl_replay, <<: [*replay, {gamma: 0.8}]}
seeds: [0, 1]
"""


def test_anchors_aliases_and_merge_keys_give_the_cells_of_the_suite_written_out(tmp_path, plugins):
    anchored = tmp_path / "anchored.yaml"
    anchored.write_text(ANCHORED)
    stream = {"dataset": "synthetic", "steps": 3, "num_classes": 6, "train_per_class": 12, "test_per_class": 6,
              "world_domains": ["clean"]}
    plain = tiny_suite(
        [{"name": "er", "buffer": {"size": 12}, "replay_ratio": 0.5},
         {"name": "dro_replay", "buffer": {"size": 12}, "replay_ratio": 0.25},
         {"name": "gcl_replay", "buffer": {"size": 12}, "replay_ratio": 0.5, "gamma": 0.8}],
        seeds=[0, 1], streams=[dict(stream), {**stream, "name": "tiny-ci2", "steps": 2}])
    plain["train"].update(lr=1.0e-4)
    a = load_suite(anchored, plugins).cells
    b = load_suite(write_suite(tmp_path / "plain.yaml", plain), plugins).cells
    assert [(c.cell_id, c.variant, c.stream_label, c.seed) for c in a] == [(c.cell_id, c.variant, c.stream_label, c.seed) for c in b]
    assert len(a) == 12
    # the merged override applies to its own entry only: an alias is never mutated through another entry
    ratios = {c.method: c.params["replay_ratio"] for c in a}
    assert ratios == {"er": 0.5, "dro_replay": 0.25, "gcl_replay": 0.5}
    assert {c.stream_label: c.config["stream"]["steps"] for c in a} == {"synthetic-ci3": 3, "tiny-ci2": 2}


def test_yaml_1_1_exponent_without_a_dot_is_the_same_cell(tmp_path, plugins):
    text = ANCHORED.replace("lr: 1e-4", "lr: {lr}")
    ids = []
    for lr in ("1e-4", "1.0e-4", "0.0001"):
        path = tmp_path / f"s{len(ids)}.yaml"
        path.write_text(text.replace("{lr}", lr))
        ids.append([c.cell_id for c in load_suite(path, plugins).cells])
    assert ids[0] == ids[1] == ids[2]


@pytest.mark.parametrize("text, expected", [
    ("methods: [zeroshot]\nmethods: [finetune]\n", "duplicate key 'methods'"),
    ("x-a: &a {lr: 1}\ntrain: {<<: *a, epochs: 1, epochs: 2}\n", "duplicate key 'epochs'"),
    ("name: a\n---\nname: b\n", "YAML syntax error: but found another document"),
    ("name: !!python/name:os.system\n", "YAML syntax error"),
    ("train: *nowhere\n", "YAML syntax error: found undefined alias 'nowhere'"),
])
def test_what_yaml_itself_refuses_is_one_line_with_the_place(tmp_path, plugins, text, expected):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_suite(path, plugins)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)) and expected in message


def test_an_unknown_top_level_key_is_still_refused_but_x_keys_are_free(tmp_path, plugins):
    suite = tiny_suite(["zeroshot"])
    ok = write_suite(tmp_path / "ok.yaml", {**suite, "x-notes": {"any": ["thing"]}})
    assert len(load_suite(ok, plugins).cells) == 1
    bad = write_suite(tmp_path / "bad.yaml", {**suite, "defaults": {"lr": 1}})
    with pytest.raises(UserError, match="defaults: unknown key"):
        load_suite(bad, plugins)


def test_includes_add_up_their_streams_and_later_files_override_every_other_key(tmp_path):
    """The rule docs/suites.md states: included streams add up; any other key: later includes, then the including file, win."""
    write_suite(tmp_path / "a.yaml", {"streams": ["a"], "seeds": [0], "train": {"lr": 1, "epochs": 1}, "model": {"arch": "x"}})
    write_suite(tmp_path / "b.yaml", {"streams": ["b"], "seeds": [1], "train": {"lr": 2}})
    write_suite(tmp_path / "top.yaml", {"include": ["a.yaml", "b.yaml"], "train": {"epochs": 3}})
    assert load_raw(tmp_path / "top.yaml") == {"streams": ["a", "b"], "seeds": [1], "train": {"lr": 2, "epochs": 3},
                                               "model": {"arch": "x"}}
    write_suite(tmp_path / "own.yaml", {"include": ["a.yaml", "b.yaml"], "streams": ["own"]})
    assert load_raw(tmp_path / "own.yaml")["streams"] == ["own"]  # the including file's own streams replace them
    write_suite(tmp_path / "nested.yaml", {"include": ["top.yaml", "a.yaml"]})
    assert load_raw(tmp_path / "nested.yaml")["streams"] == ["a", "b", "a"]


def test_suite_keeps_the_reading_names_importable():
    import clbench.suite as suite
    import clbench.suite_yaml as suite_yaml

    assert suite.read_yaml is suite_yaml.read_yaml and suite.load_raw is suite_yaml.load_raw
