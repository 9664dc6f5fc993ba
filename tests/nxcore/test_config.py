import json

import attrs
import pytest

from nxcore.config import Config, config, in_range, one_of, positive
from nxcore.head import LinearHead, LinearHeadConfig, SplitHeadConfig


@config
class _Inner(Config):
    width: int = attrs.field(default=4, validator=positive())
    rate: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0, low_open=True))


@config
class _Outer(Config):
    name: str = attrs.field(default="x", validator=one_of("x", "y"))
    steps: tuple[tuple[int, int], ...] = ((1, 1), (2, 2))
    inner: _Inner = attrs.field(factory=_Inner)
    head: Config = attrs.field(factory=lambda: LinearHeadConfig(dim=4, vocab_size=9))
    maybe: int | None = None

    def build(self):
        return self.head.build()


def test_json_round_trip_keeps_nested_types_and_tuples():
    cfg = _Outer(steps=((1, 2), (3, 4)), inner=_Inner(width=7), maybe=3)
    back = Config.from_json(cfg.to_json())
    assert back == cfg
    assert type(back.inner) is _Inner
    assert back.steps == ((1, 2), (3, 4))


def test_swapping_a_sub_config_swaps_the_component():
    cfg = _Outer().replace(head=SplitHeadConfig(dim=4, range_sizes=(5, 4)))
    back = _Outer.from_json(cfg.to_json())
    assert back.head.range_sizes == (5, 4)
    assert type(back.build()).__name__ == "SplitHead"
    assert isinstance(_Outer().build(), LinearHead)


def test_save_and_load(tmp_path):
    cfg = _Outer(inner=_Inner(rate=0.25))
    cfg.save(tmp_path / "config.json")
    assert _Outer.load(tmp_path / "config.json") == cfg


def test_unknown_field_is_an_error_naming_it():
    data = _Inner().to_dict() | {"widht": 3}
    with pytest.raises(ValueError, match=r"no field\(s\) \['widht'\].*known fields are \['rate', 'width'\]"):
        Config.from_dict(data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0}, r"_Inner.width = 0 is not allowed; expected a number > 0"),
        ({"rate": 0.0}, r"_Inner.rate = 0.0 is not allowed; expected a number in \(0.0, 1.0\]"),
        ({"rate": 1.5}, r"_Inner.rate = 1.5 is not allowed"),
    ],
)
def test_validators_name_field_value_and_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _Inner(**kwargs)


def test_one_of_lists_the_choices():
    with pytest.raises(ValueError, match=r"_Outer.name = 'z' is not allowed; expected one of \['x', 'y'\]"):
        _Outer(name="z")


def test_type_path_must_name_a_config_class():
    with pytest.raises(TypeError, match="not an nx Config class"):
        Config.from_dict({"type": "os:system", "command": "true"})
    with pytest.raises(ValueError, match="cannot be found"):
        Config.from_dict({"type": "nxcore.config:NoSuchThing"})


def test_loading_a_config_of_another_family_is_refused():
    text = _Inner().to_json()
    with pytest.raises(TypeError, match="is not a LinearHeadConfig"):
        LinearHeadConfig.from_json(text)


def test_invalid_json_is_a_value_error():
    with pytest.raises(ValueError, match="not valid JSON"):
        Config.from_json("{not json")


def test_configs_are_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        _Inner().width = 3


def test_json_is_plain_and_readable():
    data = json.loads(LinearHeadConfig(dim=2, vocab_size=3).to_json())
    assert data == {"type": "nxcore.head.linear:LinearHeadConfig", "dim": 2, "vocab_size": 3, "bias": False}
