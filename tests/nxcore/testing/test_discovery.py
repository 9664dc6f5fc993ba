import attrs
import pytest

from nxcore.head import OutputHead
from nxcore.position.protocol import RotaryPositionalEncoder
from nxcore.schedule import ScaleSchedule, Schedule
from nxcore.testing import conformance_cases, examples_of, implementations


def test_finds_the_reference_implementations_once():
    found = implementations(RotaryPositionalEncoder)
    names = [c.__qualname__ for c in found]
    assert names == sorted(set(names), key=names.index)  # no duplicates
    assert {"RoPE1D", "MultiscaleRoPE3D"} <= set(names)
    assert Schedule in implementations(ScaleSchedule)


def test_slotted_attrs_classes_resolve_to_the_published_class():
    for cls in implementations(RotaryPositionalEncoder):
        module = __import__(cls.__module__, fromlist=["_"])
        assert getattr(module, cls.__name__) is cls


def test_classes_outside_the_packages_are_ignored():
    @attrs.frozen
    class Local(ScaleSchedule):
        steps: tuple = ((1, 1),)

        def truncate(self, num_steps):
            return self

    assert Local not in implementations(ScaleSchedule)


def test_a_class_without_examples_is_named():
    class NoExamples:
        pass

    with pytest.raises(TypeError, match="NoExamples implements an nx protocol but has no classmethod examples"):
        examples_of(NoExamples)


def test_cases_carry_readable_ids():
    ids = [case.id for case in conformance_cases(OutputHead)]
    assert "LinearHead-0" in ids and "SplitHead-1" in ids
