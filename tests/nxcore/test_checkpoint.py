import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import attrs
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import nxcore.checkpoint.atomic as atomic_mod
import nxcore.checkpoint.safetensors_io as st_io
from nxcore.checkpoint import (
    CheckpointMismatchError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    from_pretrained,
    load_into,
    load_state,
    remap_keys,
    save_pretrained,
    save_sharded,
    save_state,
)
from nxcore.config import Config, config, positive


class TinyNet(nn.Module):
    def __init__(self, vocab: int, dim: int, tie: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tie:
            self.head.weight = self.embed.weight
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.register_buffer("positions", torch.arange(dim) * 3)


@config
class TinyConfig(Config):
    vocab: int = attrs.field(default=11, validator=positive())
    dim: int = attrs.field(default=8, validator=positive())
    tie: bool = True

    def build(self) -> TinyNet:
        net = TinyNet(self.vocab, self.dim, self.tie)
        net.config = self
        return net


def _tiny(**kwargs) -> TinyNet:
    torch.manual_seed(0)
    net = TinyConfig(**kwargs).build()
    net.step.fill_(7)
    return net


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


# --- single files ------------------------------------------------------------------------------

def test_save_state_round_trip_keeps_dtypes_and_metadata(tmp_path):
    state = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "fp32": torch.randn(7),
        "int64": torch.arange(-5, 5, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "s.safetensors"
    save_state(state, path, metadata={"step": "12"})
    _assert_same_state(state, load_state(path))
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "step": "12"}
    assert os.listdir(tmp_path) == ["s.safetensors"]


def test_tied_tensors_are_saved_once_and_load_as_aliases(tmp_path):
    w = torch.randn(4, 4)
    path = tmp_path / "tied.safetensors"
    save_state({"a": w, "b": w, "c": torch.ones(2)}, path)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["a", "c"]
    back = load_state(path)
    assert torch.equal(back["b"], w)
    assert back["a"].data_ptr() == back["b"].data_ptr()


def test_non_contiguous_and_overlapping_views_are_saved_correctly(tmp_path):
    base = torch.randn(4, 6)
    state = {
        "full": base,
        "transposed": base.T,
        "row": base[1],
        "strided": base[:, ::2],
        "expanded": torch.arange(3.0).expand(5, 3),
    }
    save_state(state, tmp_path / "v.safetensors")
    back = load_state(tmp_path / "v.safetensors")
    for key, value in state.items():
        assert torch.equal(back[key], value), key


def test_save_state_rejects_bad_input_with_the_fix():
    with pytest.raises(ValueError, match=r"must end in \.safetensors"):
        save_state({"a": torch.ones(1)}, "x.pt")
    with pytest.raises(TypeError, match=r"state\['a'\] must be a torch.Tensor, got int"):
        save_state({"a": 3}, "x.safetensors")
    with pytest.raises(TypeError, match=r"metadata must map str to str"):
        save_state({"a": torch.ones(1)}, "x.safetensors", metadata={"step": 3})


# --- shards ------------------------------------------------------------------------------------

def test_save_sharded_writes_the_hugging_face_layout(tmp_path):
    state = {f"layer{i}.weight": torch.full((64,), float(i)) for i in range(5)}  # 256 B each
    state["big"] = torch.randn(200)  # 800 B, larger than a shard: gets one alone
    state["tied"] = state["layer0.weight"]
    save_sharded(state, tmp_path / "ck", max_shard_bytes=600)
    files = sorted(os.listdir(tmp_path / "ck"))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert files == shards + ["model.safetensors.index.json"]
    assert all(re.fullmatch(rf"model-0000\d-of-0000{len(shards)}\.safetensors", f) for f in shards)
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"}
    assert index["metadata"]["total_size"] == 5 * 256 + 800
    assert index["metadata"]["nx.aliases"] == {"tied": "layer0.weight"}
    assert set(index["weight_map"]) == set(state) - {"tied"}
    for key, shard in index["weight_map"].items():  # each shard is a plain safetensors file
        assert torch.equal(load_file(tmp_path / "ck" / shard)[key], state[key])
    for shard in shards:
        sizes = [t.nbytes for t in load_file(tmp_path / "ck" / shard).values()]
        assert sum(sizes) <= 600 or len(sizes) == 1
    back = load_state(tmp_path / "ck")
    _assert_same_state(state, back)
    assert back["tied"].data_ptr() == back["layer0.weight"].data_ptr()


def test_a_missing_shard_or_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        load_state(tmp_path / "nope")
    state = {f"w{i}": torch.randn(64) for i in range(4)}
    save_sharded(state, tmp_path / "ck", max_shard_bytes=300)
    (tmp_path / "ck" / "model-00002-of-00004.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"names shard\(s\) that do not exist.*"
                       r"model-00002-of-00004\.safetensors.*re-download"):
        load_state(tmp_path / "ck")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no checkpoint weights"):
        load_state(tmp_path / "empty")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_truncated_or_corrupt_file_names_the_file_and_the_fix(tmp_path, damage):
    path = tmp_path / "m.safetensors"
    save_state({"w": torch.randn(100, 100)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00\xff" * 500)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} is truncated or corrupt "
                       r".*re-save it or re-download it"):
        load_state(path)


def test_a_truncated_shard_is_reported(tmp_path):
    save_sharded({"a": torch.randn(100), "b": torch.randn(100)}, tmp_path, max_shard_bytes=400)
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"model-00002-of-00002\.safetensors is truncated"):
        load_state(tmp_path)


# --- torch pickles -----------------------------------------------------------------------------

def test_torch_pickles_load_weights_only(tmp_path):
    state = _tiny().state_dict()
    torch.save(state, tmp_path / "plain.pth")
    _assert_same_state(dict(state), load_state(tmp_path / "plain.pth"))
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pt")
    _assert_same_state(dict(state), load_state(tmp_path / "wrapped.pt"))
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pt")
    with pytest.raises(ValueError, match=r"does not hold a state dict.*'epoch': int"):
        load_state(tmp_path / "nostate.pt")


class _Payload:
    """Unpickling this would create a file: it must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_holding_an_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(2), "x": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt holds objects other than tensors.*refused"):
        load_state(tmp_path / "evil.pt")
    assert not marker.exists()
    data = (tmp_path / "evil.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt is truncated or corrupt"):
        load_state(tmp_path / "cut.pt")


# --- save_pretrained / from_pretrained ---------------------------------------------------------

@pytest.mark.parametrize("max_shard_bytes", [None, 10**9, 200])
def test_save_and_from_pretrained_round_trip(tmp_path, max_shard_bytes):
    net = _tiny()
    save_pretrained(net, tmp_path / "ck", max_shard_bytes=max_shard_bytes)
    files = sorted(os.listdir(tmp_path / "ck"))
    if max_shard_bytes == 200:
        assert "model.safetensors.index.json" in files and "model.safetensors" not in files
    else:
        assert files == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["type"].endswith(":TinyConfig") and cfg["dim"] == 8
    back = from_pretrained(tmp_path / "ck", config_type=TinyConfig)
    assert isinstance(back, TinyNet)
    _assert_same_state(net.state_dict(), back.state_dict())
    assert back.head.weight is back.embed.weight  # still tied


def test_save_pretrained_takes_an_explicit_config_and_checks_it(tmp_path):
    net = TinyNet(5, 4, tie=False)
    with pytest.raises(ValueError, match=r"needs a config for config.json.*config=\.\.\."):
        save_pretrained(net, tmp_path / "a")
    save_pretrained(net, tmp_path / "a", config=TinyConfig(vocab=5, dim=4, tie=False))
    back = from_pretrained(tmp_path / "a")
    _assert_same_state(net.state_dict(), back.state_dict())
    with pytest.raises(FileNotFoundError, match=r"config\.json does not exist"):
        from_pretrained(tmp_path)


def test_from_pretrained_casts_floats_to_dtype_but_never_integers(tmp_path):
    net = _tiny()
    save_pretrained(net, tmp_path / "ck")
    back = from_pretrained(tmp_path / "ck", dtype=torch.bfloat16)
    assert back.proj.weight.dtype == torch.bfloat16
    assert torch.equal(back.proj.weight, net.proj.weight.to(torch.bfloat16))
    assert back.step.dtype == torch.int64 and back.step.item() == 7
    assert back.positions.dtype == torch.int64
    assert torch.equal(back.positions, net.positions)


def test_load_into_casts_to_each_parameter_dtype_when_dtype_is_none():
    net = _tiny()
    state = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
             for k, v in net.state_dict().items()}
    fresh = _tiny()
    load_into(fresh, state)
    assert fresh.proj.weight.dtype == torch.float32
    assert torch.equal(fresh.proj.weight, state["proj.weight"].float())
    wrong = dict(state, positions=state["positions"].float())
    with pytest.raises(CheckpointMismatchError, match=r"positions: module \(8,\) int64, "
                       r"checkpoint \(8,\) float32"):
        load_into(fresh, wrong)


def test_from_pretrained_with_a_config_that_no_longer_fits(tmp_path):
    net = _tiny()
    save_pretrained(net, tmp_path / "ck")
    TinyConfig(vocab=12).save(tmp_path / "ck" / "config.json")
    with pytest.raises(CheckpointMismatchError, match=rf"checkpoint {re.escape(str(tmp_path))}.*"
                       r"0 missing, 0 unexpected, 2 mis-shaped"):
        from_pretrained(tmp_path / "ck")
    with pytest.warns(UserWarning, match=r"strict=False\) left 0 missing, 0 unexpected and 2"):
        back = from_pretrained(tmp_path / "ck", strict=False)
    assert torch.equal(back.proj.weight, net.proj.weight)
    assert back.embed.weight.shape == (12, 8)


# --- mismatches and key maps -------------------------------------------------------------------

def test_a_mismatch_reports_missing_unexpected_and_misshaped_keys_at_once():
    net = _tiny()
    state = dict(net.state_dict())
    del state["proj.bias"]
    state["extra.weight"] = torch.zeros(2, 2)
    state["proj.weight"] = torch.zeros(8, 9)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(
        CheckpointMismatchError,
        match=r"(?s)1 missing, 1 unexpected, 1 mis-shaped.*"
        r"missing keys.*proj\.bias \(8,\) float32.*"
        r"unexpected keys.*extra\.weight \(2, 2\) float32.*"
        r"mis-shaped keys.*proj\.weight: module \(8, 8\) float32, checkpoint \(8, 9\).*"
        r"key_map=.*strict=False",
    ) as info:
        load_into(net, state)
    report = info.value.report
    assert report.missing == ("proj.bias",) and report.unexpected == ("extra.weight",)
    assert [m.key for m in report.mismatched] == ["proj.weight"]
    _assert_same_state(before, net.state_dict())  # nothing was loaded


def test_strict_false_loads_what_matches_and_returns_the_report():
    src, dst = _tiny(), TinyConfig().build()
    state = dict(src.state_dict())
    del state["proj.bias"]
    state["proj.weight"] = torch.zeros(3, 3)
    report = load_into(dst, state, strict=False)
    assert report.missing == ("proj.bias",) and not report.ok
    assert torch.equal(dst.embed.weight, src.embed.weight)
    assert not torch.equal(dst.proj.weight, torch.zeros(8, 8))
    assert dst.step.item() == 7


def test_long_mismatch_lists_are_truncated():
    state = dict(_tiny().state_dict()) | {f"junk{i}": torch.zeros(1) for i in range(100)}
    with pytest.raises(CheckpointMismatchError, match=r"junk19 .*\n  \.\.\. and 80 more") as info:
        load_into(_tiny(), state)
    assert "junk20" not in str(info.value)


def test_a_prefixed_checkpoint_gets_a_key_map_hint_that_works():
    state = {f"model.{k}": v for k, v in _tiny().state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"key_map=\[\(r'\^model\\\.', ''\)\]"):
        load_into(TinyConfig().build(), state)
    assert load_into(TinyConfig().build(), state, key_map=[(r"^model\.", "")]).ok


def test_a_tied_key_absent_from_the_checkpoint_is_not_missing():
    net = _tiny()
    state = {k: v for k, v in net.state_dict().items() if k != "head.weight"}  # HF style
    fresh = TinyConfig().build()
    assert load_into(fresh, state).ok
    assert torch.equal(fresh.head.weight, net.embed.weight)


def test_remap_keys_with_regex_rules_and_callables():
    t = {k: torch.tensor(float(i)) for i, k in
         enumerate(["model.layers.0.attn.q", "model.layers.0.attn.k", "model.norm.gamma", "aux"])}
    rules = [(r"\.gamma$", ".weight"), (r"^model\.", ""), (r"^aux$", None), (r"attn", "never")]
    out = remap_keys(t, rules)
    assert list(out) == ["layers.0.attn.q", "layers.0.attn.k", "model.norm.weight"]
    assert out["model.norm.weight"] is t["model.norm.gamma"]  # first match wins
    out = remap_keys(t, lambda k: None if k == "aux" else k.upper())
    assert list(out) == ["MODEL.LAYERS.0.ATTN.Q", "MODEL.LAYERS.0.ATTN.K", "MODEL.NORM.GAMMA"]
    with pytest.raises(ValueError, match=r"renames both 'model\.layers\.0\.attn\.q' and "
                       r"'model\.layers\.0\.attn\.k' to 'x'"):
        remap_keys(t, [(r"^model\.layers.*", "x")])
    with pytest.raises(ValueError, match=r"rule 0: '\(' is not a valid regex"):
        remap_keys(t, [("(", "x")])
    with pytest.raises(TypeError, match=r"wrap one rule in a list"):
        remap_keys(t, "^model")
    with pytest.raises(TypeError, match=r"returned 3 \(int\) for key"):
        remap_keys(t, lambda k: 3)


# --- atomicity ---------------------------------------------------------------------------------

def test_atomic_writes_and_atomic_path(tmp_path):
    atomic_write_text(tmp_path / "sub" / "a.txt", "héllo")
    assert (tmp_path / "sub" / "a.txt").read_text() == "héllo"
    atomic_write_bytes(tmp_path / "sub" / "a.txt", b"new")
    assert (tmp_path / "sub" / "a.txt").read_bytes() == b"new"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(tmp_path / "sub" / "a.txt") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert (tmp_path / "sub" / "a.txt").read_bytes() == b"new"
    assert os.listdir(tmp_path / "sub") == ["a.txt"]
    with pytest.raises(TypeError, match=r"text must be a str, got bytes"):
        atomic_write_text(tmp_path / "b.txt", b"x")


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_save_state_leaves_the_old_file(tmp_path, monkeypatch, error):
    path = tmp_path / "m.safetensors"
    save_state({"w": torch.ones(10)}, path)
    old = path.read_bytes()

    def half_then_fail(tensors, target, metadata):
        Path(target).write_bytes(b"partial")
        raise error("disk full")

    monkeypatch.setattr(st_io, "_write_safetensors", half_then_fail)
    with pytest.raises(error):
        save_state({"w": torch.zeros(10)}, path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["m.safetensors"]


def _fail_on_call(monkeypatch, n: int):
    real = st_io._write_safetensors
    calls = []

    def write(tensors, path, metadata):
        calls.append(path)
        if len(calls) == n:
            real(tensors, path, metadata)
            Path(path).write_bytes(Path(path).read_bytes()[:20])
            raise OSError("killed during a shard")
        real(tensors, path, metadata)

    monkeypatch.setattr(st_io, "_write_safetensors", write)


def _fail_swap(monkeypatch):
    def swap(new, target):
        raise OSError("crash before the final rename")

    monkeypatch.setattr(atomic_mod, "_swap_directories", swap)


@pytest.mark.parametrize("where", ["second shard", "final rename"])
def test_an_interrupted_save_pretrained_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    save_pretrained(_tiny(), tmp_path / "ck", max_shard_bytes=200)
    (tmp_path / "ck" / "README.md").write_text("keep me")
    before, listing = _snapshot(tmp_path / "ck"), sorted(os.listdir(tmp_path))
    if where == "second shard":
        _fail_on_call(monkeypatch, 2)
    else:
        _fail_swap(monkeypatch)
    net = _tiny(dim=6)
    with pytest.raises(OSError, match="killed during a shard|before the final rename"):
        save_pretrained(net, tmp_path / "ck", max_shard_bytes=100)
    assert _snapshot(tmp_path / "ck") == before
    assert sorted(os.listdir(tmp_path)) == listing  # no temporary directory left behind
    monkeypatch.undo()
    save_pretrained(net, tmp_path / "ck")  # switch to a single file: old shards go, README stays
    assert sorted(os.listdir(tmp_path / "ck")) == ["README.md", "config.json", "model.safetensors"]
    assert (tmp_path / "ck" / "README.md").read_text() == "keep me"
    _assert_same_state(net.state_dict(), from_pretrained(tmp_path / "ck").state_dict())


def test_directory_swap_without_renameat2(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_mod, "_exchange", lambda a, b: False)
    save_pretrained(_tiny(), tmp_path / "ck")
    before = _snapshot(tmp_path / "ck")
    real_rename = os.rename

    def rename(src, dst):  # the second rename (new -> target) fails
        if ".nxtmp." in str(src):
            raise OSError("crash between the two renames")
        real_rename(src, dst)

    monkeypatch.setattr(atomic_mod.os, "rename", rename)
    with pytest.raises(OSError, match="between the two renames"):
        save_pretrained(_tiny(dim=6), tmp_path / "ck")
    assert _snapshot(tmp_path / "ck") == before
    assert os.listdir(tmp_path) == ["ck"]
    monkeypatch.setattr(atomic_mod.os, "rename", real_rename)
    save_pretrained(_tiny(dim=6), tmp_path / "ck")
    assert from_pretrained(tmp_path / "ck").proj.weight.shape == (6, 6)
    assert os.listdir(tmp_path) == ["ck"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_save_are_cleaned_or_restored(tmp_path):
    host, pid = atomic_mod.host_tag(), _dead_pid()
    save_pretrained(_tiny(), tmp_path / "ck")
    stale = tmp_path / f".ck.nxtmp.{host}.{pid}.abcd1234"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    save_pretrained(_tiny(), tmp_path / "ck")
    assert os.listdir(tmp_path) == ["ck"]
    # killed between the two renames of the fallback swap: the old checkpoint is set aside
    os.rename(tmp_path / "ck", tmp_path / f".ck.nxold.{host}.{pid}.abcd1234")
    with pytest.raises(FileNotFoundError, match=r"interrupted save left the previous content"):
        from_pretrained(tmp_path / "ck")
    atomic_write_text(tmp_path / "other.txt", "x")  # a save to another target leaves it alone
    assert len(os.listdir(tmp_path)) == 2
    save_pretrained(_tiny(dim=6), tmp_path / "ck")  # restores it first, then replaces it
    assert sorted(os.listdir(tmp_path)) == ["ck", "other.txt"]


def test_save_pretrained_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"not empty and holds no checkpoint files \(notes.txt\)"):
        save_pretrained(_tiny(), tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]


_KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import torch
    from torch import nn
    from nxcore.checkpoint import save_pretrained, save_state
    from nxcore.config import Config, config

    @config
    class Version(Config):
        version: int = 0

    root = sys.argv[1]
    net = nn.Module()
    for i in range(4):
        net.register_buffer(f"b{i}", torch.zeros(750_000))  # 3 MB each
    v = int(sys.argv[2])
    while True:
        v += 1
        for b in net.buffers():
            b.fill_(v)
        save_state(net.state_dict(), os.path.join(root, "state.safetensors"))
        save_pretrained(net, os.path.join(root, "ck"), config=Version(version=v),
                        max_shard_bytes=5_000_000)
        print(v, flush=True)
    """
)


def _single_version(state: dict) -> int:
    values = {float(x) for t in state.values() for x in t.unique()}
    assert len(values) == 1, f"a checkpoint mixes saves: {sorted(values)}"
    return int(values.pop())


def test_sigkill_mid_save_always_leaves_a_loadable_checkpoint(tmp_path):
    script = tmp_path / "saver.py"
    script.write_text(_KILL_SCRIPT)
    delays = (0.03, 0.11)  # savers run side by side, each killed at its own moment
    roots = [tmp_path / f"out{i}" for i in range(len(delays))]
    procs = []
    for root in roots:
        root.mkdir()
        save_state({"b0": torch.full((4,), -1.0)}, root / "state.safetensors")  # a previous save
        procs.append(subprocess.Popen([sys.executable, str(script), str(root), "0"],
                                      stdout=subprocess.PIPE, text=True))
    try:
        firsts = [int(proc.stdout.readline() or 0) for proc in procs]  # one full save each
        begun = time.monotonic()
        for proc, delay in zip(procs, delays, strict=True):
            time.sleep(max(0.0, begun + delay - time.monotonic()))
            proc.send_signal(signal.SIGKILL)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert all(firsts), "a saver died before its first save"
    for root, first in zip(roots, firsts, strict=True):
        file_version = _single_version(load_state(root / "state.safetensors"))
        dir_version = _single_version(load_state(root / "ck"))
        assert json.loads((root / "ck" / "config.json").read_text())["version"] == dir_version
        assert file_version >= dir_version >= first >= 1
        # a later save sweeps what the killed process left behind
        save_state({"w": torch.ones(1)}, root / "state.safetensors")
        save_sharded({"w": torch.ones(1)}, root / "ck", max_shard_bytes=100)
        assert sorted(os.listdir(root)) == ["ck", "state.safetensors"]
