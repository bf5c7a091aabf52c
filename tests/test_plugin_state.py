"""A plugin method's state survives a resume, or is refused when it is saved; the helpers plugin authors test with."""
import collections
import enum
import io

import numpy as np
import pytest
import torch
import yaml

from clbench import Method
from clbench.errors import UserError
from clbench.runner import run_cell
from clbench.state_check import ALLOWED, check_method_state, first_unloadable
from clbench.testing import TINY_TRAIN, check_resume, first_difference, run_method, tiny_suite, write_suite


class Teacher:
    """A plain object, as a distillation method might keep its old model."""

    def __init__(self):
        self.scale = torch.ones(1)


class Counting(Method):
    """Counts the experiences it has seen; its count goes into the record, so a lost count shows."""

    name = "counting_plugin"
    trains = False
    loads: list = []  # every state load_state_dict received, across instances

    def __init__(self, params, learner):
        super().__init__(params, learner)
        self.count = 0
        self.classes: list[int] = []

    def after_experience(self, exp):
        self.count += 1
        self.classes += list(exp.classes)

    def record_extras(self):
        return {"experiences_seen": self.count, "classes_seen": len(self.classes)}

    def state_dict(self):
        return {"count": torch.tensor(self.count), "classes": list(self.classes)}

    def load_state_dict(self, state):
        type(self).loads.append(state)
        self.count = int(state["count"])
        self.classes = list(state["classes"])


class Forgetful(Counting):
    """Forgets to restore its count on resume."""

    name = "forgetful_plugin"

    def load_state_dict(self, state):
        self.classes = list(state["classes"])


class WithTeacher(Counting):
    """Keeps a plain object in its state: torch.load(weights_only=True) would refuse it on resume."""

    name = "teacher_plugin"
    calls: list = []

    def before_experience(self, exp):
        type(self).calls.append(exp.index)

    def state_dict(self):
        return {**super().state_dict(), "teacher": Teacher()}


class Breaks(Counting):
    """Its load_state_dict raises until ``fixed`` is set."""

    name = "breaks_plugin"
    fixed = False

    def load_state_dict(self, state):
        if not type(self).fixed:
            raise KeyError("teacher")
        super().load_state_dict(state)


TEACHER_LINE = (f"method 'teacher_plugin': state_dict()['teacher'] is a {__name__}.Teacher; checkpoints hold only tensors, "
                "numbers, strings, bools, None and lists/tuples/dicts of them (torch.load weights_only): save its tensors "
                "and rebuild the object in load_state_dict")


def cell_of(tmp_path, method_cls, plugins, **kw):
    from clbench.suite import load_suite

    plugins.methods.register(method_cls.name, method_cls, "test")
    return load_suite(write_suite(tmp_path / "s.yaml", tiny_suite([method_cls.name], **kw)), plugins).cells[0], plugins


def interrupt_after(step):
    def report(event):
        if event.step == step:
            raise KeyboardInterrupt

    return report


# --- the walker agrees with torch -----------------------------------------------------------


class Colour(enum.IntEnum):
    RED = 1


tensor_with_attribute = torch.zeros(2)
tensor_with_attribute.note = "kept"
tensor_with_object = torch.zeros(2)
tensor_with_object.note = Teacher()

ADMITTED = {
    "numbers": [0, -2**70, 1.5, float("nan"), float("inf"), True, None, 1 + 2j],
    "text": ["x", b"raw", bytearray(b"raw")],
    "containers": ((1, 2), [], {}, {"a": {1: [2]}}, {(1, "a"): 3}, {1, 2}),
    "collections": [collections.OrderedDict(a=1), collections.Counter(a=2)],
    "tensors": [torch.ones(2), torch.arange(3), torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.bool),
                torch.ones(3, 4).t(), torch.arange(10)[2:5], torch.tensor(3.0), torch.nn.Parameter(torch.ones(2)),
                torch.ones(2, requires_grad=True) * 2, torch.eye(3).to_sparse(), tensor_with_attribute],
    "torch_facts": [torch.Size([2, 3]), torch.float16, torch.int8, torch.device("cpu"), torch.device("cuda", 1),
                    torch.strided, torch.per_tensor_affine],
}
REFUSED = {
    "object": Teacher(),
    "numpy_array": np.zeros(2),
    "numpy_number": np.float32(1.0),
    "int_enum": Colour.RED,
    "namedtuple": collections.namedtuple("Pair", "a b")(1, 2),
    "dict_subclass": collections.defaultdict(list),
    "frozenset": frozenset({1}),
    "deque": collections.deque([1]),
    "generator": torch.Generator(),
    "range": range(3),
    "slice": slice(1, 2),
    "a_type": int,
    "function": len,
    "tensor_attribute": tensor_with_object,
    "enum_key": {Colour.RED: 1},
    "deep": {"a": [1, {"b": (2, np.int64(3))}]},
}


def torch_loads(value) -> bool:
    buf = io.BytesIO()
    try:
        torch.save({"x": value}, buf)
        buf.seek(0)
        torch.load(buf, weights_only=True)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("kind", ADMITTED)
def test_every_kind_the_walker_admits_loads_with_weights_only(kind):
    for value in ADMITTED[kind]:
        assert first_unloadable({"x": value}) is None, value
        assert torch_loads(value), value


@pytest.mark.parametrize("name", REFUSED)
def test_what_the_walker_refuses_torch_refuses_too(name):
    assert first_unloadable({"x": REFUSED[name]}) is not None
    assert not torch_loads(REFUSED[name])


def test_the_walker_names_the_first_offending_key_path():
    state = {"ok": [1, torch.ones(1)], "teacher": {"model": Teacher(), "z": np.zeros(1)}}
    where, part = first_unloadable(state)
    assert where == "state_dict()['teacher']['model']" and type(part) is Teacher
    assert first_unloadable({"buffer": [(1, 2), (3, np.int64(4))]})[0] == "state_dict()['buffer'][1][1]"
    assert first_unloadable({"w": {Colour.RED: 1}})[0] == "the key <Colour.RED: 1> of state_dict()['w']"
    assert first_unloadable({"s": {frozenset()}})[0] == "an element of state_dict()['s']"
    assert first_unloadable({"t": tensor_with_object})[0] == "state_dict()['t'].note"
    loop: list = [1]
    loop.append(loop)
    assert first_unloadable({"loop": loop, "shared": [loop, loop]}) is None  # cycles and shared parts: walked once


def test_the_refusal_is_one_line_with_a_hint_for_the_kind():
    with pytest.raises(UserError) as info:
        check_method_state("m", {"proto": np.zeros(3)})
    assert str(info.value) == (f"method 'm': state_dict()['proto'] is a numpy.ndarray; checkpoints hold only {ALLOWED}: "
                               "convert it with torch.from_numpy, or .item() for a number")
    with pytest.raises(UserError, match=r"state_dict\(\)\['c'\] is a .*Colour; .*: store it as a plain int$"):
        check_method_state("m", {"c": Colour.RED})
    check_method_state("m", {"fine": [torch.ones(1), {"n": 1}]})


# --- the runner: refused at the first save, restored on resume, never called corrupt ------------------------------


def test_a_state_a_checkpoint_cannot_hold_is_refused_at_the_first_save(tmp_path, plugins):
    WithTeacher.calls.clear()
    cell, plugins = cell_of(tmp_path, WithTeacher, plugins)
    reported = []
    with pytest.raises(UserError) as info:
        run_cell(cell, plugins, on_experience=reported.append, checkpoints=tmp_path / "ck")
    assert str(info.value) == TEACHER_LINE
    assert WithTeacher.calls == [0] and reported == []  # refused after the first experience, before it was reported
    assert not (tmp_path / "ck").exists() or not list((tmp_path / "ck").iterdir())  # nothing saved


def test_the_cli_stops_the_run_with_that_one_line_and_exit_2(tmp_path, plugins, capsys):
    from clbench.cli import main

    WithTeacher.calls.clear()
    plugins.methods.register(WithTeacher.name, WithTeacher, "test")
    path = write_suite(tmp_path / "s.yaml", tiny_suite([WithTeacher.name, "zeroshot"], seeds=[0, 1]))
    with pytest.raises(SystemExit) as info:
        main(["run", str(path), "--results", str(tmp_path / "out")], plugins=plugins)
    assert info.value.code == 2
    assert TEACHER_LINE in capsys.readouterr().err
    assert WithTeacher.calls == [0]  # its first cell stopped the run: the other seed's cell never started
    assert not [p for p in (tmp_path / "out" / "records").glob("*.json") if WithTeacher.name in p.read_text()]


def test_a_tensor_state_is_given_back_to_load_state_dict_on_resume(tmp_path, plugins):
    Counting.loads.clear()
    cell, plugins = cell_of(tmp_path, Counting, plugins)
    folder = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, plugins, on_experience=interrupt_after(1), checkpoints=folder)
    resumed = run_cell(cell, plugins, checkpoints=folder)
    assert resumed["status"] == "done" and resumed["cost"]["resumed_at_experience"] == 2
    [state] = Counting.loads
    assert torch.equal(state["count"], torch.tensor(2)) and state["classes"] == resumed["class_order"][:4]
    assert resumed["method_state"] == {"experiences_seen": 3, "classes_seen": 6}
    assert not list(folder.glob("*.corrupt-*"))  # a valid checkpoint is never called corrupt


def test_a_load_state_dict_that_raises_fails_the_cell_and_keeps_the_checkpoint(tmp_path, plugins):
    Breaks.fixed = False
    cell, plugins = cell_of(tmp_path, Breaks, plugins)
    folder = tmp_path / "ck"
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, plugins, on_experience=interrupt_after(0), checkpoints=folder)
    failed = run_cell(cell, plugins, checkpoints=folder)
    assert failed["status"] == "failed"
    assert failed["error"].startswith("RuntimeError: method 'breaks_plugin': load_state_dict could not restore its state "
                                      "from the checkpoint (KeyError: 'teacher'); kept ")
    assert (folder / f"{cell.cell_id}.pt").is_file() and not list(folder.glob("*.corrupt-*"))
    Breaks.fixed = True  # the author fixes load_state_dict: the rerun resumes from the kept checkpoint
    try:
        resumed = run_cell(cell, plugins, checkpoints=folder)
    finally:
        Breaks.fixed = False
    assert resumed["status"] == "done" and resumed["cost"]["resumed_at_experience"] == 1


def test_a_checkpoint_torch_cannot_read_is_set_aside_with_a_warning(tmp_path, plugins, capsys):
    from clbench.checkpoint import FORMAT

    cell, plugins = cell_of(tmp_path, Counting, plugins)
    folder = tmp_path / "ck"
    folder.mkdir()
    # as an older clbench, without the check at save time, wrote it
    torch.save({"format": FORMAT, "cell_id": cell.cell_id, "next_step": 1, "method": {"proto": np.zeros(2)}},
               folder / f"{cell.cell_id}.pt")
    record = run_cell(cell, plugins, checkpoints=folder)
    assert record["status"] == "done" and "resumed_at_experience" not in record["cost"]
    [aside] = folder.glob("*.corrupt-*")
    err = capsys.readouterr().err
    assert (f"warning: cell {cell.cell_id}: cannot read its checkpoint (torch.load(weights_only=True) refused it: "
            f"Unsupported global: GLOBAL numpy.") in err and f"moved it to {aside.name}, the cell starts over" in err


# --- check_resume, the helper plugin authors call ----------------------------------------------------------------------


@pytest.mark.parametrize("stop_after", [0, 1])
def test_check_resume_passes_for_a_method_that_saves_all_its_state(stop_after):
    record = check_resume(Counting, stop_after=stop_after)
    assert record["cost"]["resumed_at_experience"] == stop_after + 1 and record["method_state"]["experiences_seen"] == 3


def test_check_resume_names_the_key_a_forgetful_method_gets_wrong():
    with pytest.raises(AssertionError) as info:
        check_resume(Forgetful, stop_after=0)
    assert str(info.value) == ("method 'forgetful_plugin': resumed after experience 0, the record differs from an "
                               "uninterrupted run at record['method_state']['experiences_seen']: 3 (uninterrupted) != 2 "
                               "(resumed); state_dict()/load_state_dict() likely miss part of the method's state")


def test_check_resume_refuses_an_unsaveable_state_and_a_stop_without_a_checkpoint():
    with pytest.raises(UserError, match="state_dict\\(\\)\\['teacher'\\]"):
        check_resume(WithTeacher)
    with pytest.raises(ValueError, match="stop_after=2: the cell has 3 experiences"):
        check_resume(Counting, stop_after=2)


def test_check_resume_is_a_fixture(clbench_check_resume):
    assert clbench_check_resume is check_resume


def test_first_difference():
    assert first_difference({"a": [1, 2.0, float("nan")]}, {"a": [1, 2.0, float("nan")]}) is None
    assert first_difference({"a": [1, 2]}, {"a": [1, 3]}) == ("record['a'][1]", 2, 3)
    assert first_difference({"a": [1]}, {"a": [1, 2]}) == ("len(record['a'])", 1, 2)
    assert first_difference({"a": 1}, {"a": 1, "b": None}) == ("record['b']", "<missing>", None)
    assert first_difference({"x": 0.5}, {"x": 0.5 + 1e-9}, atol=1e-6) is None


# --- one rule for train= in both fixtures ------------------------------------------------------------------------------


def test_both_fixtures_merge_train_over_the_tiny_settings(clbench_tiny_suite, clbench_run_method, plugins):
    suite = yaml.safe_load(clbench_tiny_suite(["zeroshot"], train={"epochs": 2}).read_text())
    assert suite["train"] == {**TINY_TRAIN, "epochs": 2}
    assert tiny_suite(["zeroshot"], train={"lr": 0.5})["train"] == {**TINY_TRAIN, "lr": 0.5}
    assert tiny_suite(["zeroshot"])["train"] == TINY_TRAIN
    record = clbench_run_method(plugins.methods.get("zeroshot"), train={"epochs": 2}, plugins=plugins)
    assert record["status"] == "done"
    assert {k: record["config"]["train"][k] for k in TINY_TRAIN} == {**TINY_TRAIN, "epochs": 2}
    assert clbench_run_method is run_method
