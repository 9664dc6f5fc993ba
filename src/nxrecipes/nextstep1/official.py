"""Load an official NextStep-1 / NextStep-1.1 checkpoint directory (the Hugging Face layout).

The official model repos (``stepfun-ai/NextStep-1-Large``, ``-Large-Edit``, ``-Large-Pretrain``,
``NextStep-1.1``, ...) hold::

    config.json                        Llama/Qwen2 fields + NextStep's (``config_from_official``)
    model.safetensors                  all weights, or, as released (12 fp32 shards of ~5 GB):
    model-0000K-of-0000N.safetensors   shards named by
    model.safetensors.index.json       {"weight_map": {key: shard file}}
    tokenizer.json                     Qwen2.5 BPE + NextStep's added special tokens
    added_tokens.json                  {token text: id} of every added token
    tokenizer_config.json              (optional here) its ``bos_token``/``eos_token`` name roles

Weight keys are the official module names without prefix (fact sheet §5), which are this package's
parameter names: ``embed_tokens.weight``, ``layers.N.self_attn.{q,k,v,o}_proj.*``,
``layers.N.mlp.{gate,up,down}_proj.weight``, ``layers.N.{input,post_attention}_layernorm.weight``,
``norm.weight``, ``lm_head.weight``, ``image_{in,out}_projector.*``, ``image_head.net.*``. Also read:
a ``model.`` prefix (stripped); RoPE ``inv_freq`` keys (dropped: not weights); ``gen_pos_embed``
while ``use_gen_pos_embed`` is off (dropped: GH-v1 registers that buffer unconditionally); and
``lm_head.weight`` of a tied model (dropped: Hugging Face re-ties it to ``embed_tokens`` after
loading). With ``use_gen_pos_embed`` on and no ``gen_pos_embed`` in the files, the fixed 2D sin-cos
table is computed, as the official model does at construction.

Only safetensors is read (never a pickle), so loading executes nothing from the files. Memory: the
model is built on the meta device (no random init, no second copy), every key is matched against
the shard headers before any data is read (a missing, unexpected or mis-shaped key costs no I/O),
then tensors are read one at a time, cast to ``dtype``, moved to ``device`` and assigned in place:
the peak is the model in ``dtype`` plus one tensor as stored (fp32 on disk for NextStep-1-Large).

``config.json`` is read the way the official ``NextStepConfig(LlamaConfig)`` reads it: a field it
lacks takes LlamaConfig's default (``rope_theta`` 1e4, ``rms_norm_eps`` 1e-6, no biases, untied,
``max_position_embeddings`` 2048, ``num_key_value_heads`` = heads, ``o_attention_bias`` =
``attention_bias``), NextStep's own defaults for its fields (head 1536 x 12, batch_mul 4, 16
channels, 2 x 2 patches, loss weights 0.01 / 1.0). The released configs state every one of these
(Hugging Face writes them all); a missing ``rope_theta`` warns, because Qwen2.5 uses 1e6 and the
Llama default 1e4 would silently change every position. Sizes (``hidden_size``,
``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, ``vocab_size``) and the
special ids are required. The head is spelled two ways: NextStep-1 (``fm_head_dim``,
``fm_head_layers``, ``fm_head_batch_mul``, ``latent_channels``, ``latent_patch_size``,
``im_loss_weight``) and NextStep-1.1 (``genloss_width``, ``genloss_depth``, ``genloss_batch_mul``,
``num_channels``, ``patch_size``, ``image_loss_weight``, ``genloss_type`` "transport",
``genloss_net_arch`` "mlp"); both are accepted, and a config that states both must agree.
Inference-only or training-only extras (``latent_size``/``image_size``, ``noise_strength``,
``genloss_num_sampling_steps``, ``vae_name_or_path``, ``torch_dtype``, ...) are ignored.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from nxcore.checkpoint import CheckpointMismatchError, KeyMismatch, LoadReport
from nxcore.checkpoint.safetensors_io import INDEX_FILE, SINGLE_FILE
from nxcore.nn import DecoderLayerConfig
from nxcore.tokenizer.text import BPETokenizer, SpecialTokens
from nxrecipes.nextstep1.config import NextStep1Config
from nxrecipes.nextstep1.head import FlowHeadConfig
from nxrecipes.nextstep1.model import NextStep1, sincos_2d

__all__ = [
    "ADDED_TOKENS_FILE",
    "CONFIG_FILE",
    "TOKENIZER_CONFIG_FILE",
    "TOKENIZER_FILE",
    "OfficialNextStep1",
    "config_from_official",
    "load_official",
]

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
ADDED_TOKENS_FILE = "added_tokens.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

MODEL_TYPES = ("nextstep", "stepx_llama")  # HF remote code / GH-v2 training code
LLAMA_ROPE_THETA = 10000.0  # LlamaConfig's and Qwen2Config's default; Qwen2.5 states 1e6
SPECIALS = SpecialTokens.nextstep1()
CONFIG_IDS = {  # config.json field -> the added token whose id it must be
    "pad_token_id_added": SPECIALS.pad,
    "boi": SPECIALS.boi,
    "eoi": SPECIALS.eoi,
    "image_placeholder_id": SPECIALS.image_placeholder,
}
REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
            *CONFIG_IDS)
_SHOW = 10  # keys listed per kind in a mismatch message
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}

# The two spellings of the head fields: our name -> (NextStep-1 key, NextStep-1.1 key, default).
_HEAD_FIELDS = {
    "width": ("fm_head_dim", "genloss_width", 1536),
    "depth": ("fm_head_layers", "genloss_depth", 12),
    "batch_mul": ("fm_head_batch_mul", "genloss_batch_mul", 4),
    "channels": ("latent_channels", "num_channels", 16),
    "patch": ("latent_patch_size", "patch_size", 2),
    "image_loss_weight": ("im_loss_weight", "image_loss_weight", 1.0),
}
_SUPPORTED_CHOICES = {  # NextStep-1.1 head options: the only values this implementation has
    "genloss_type": ("transport",),
    "genloss_net_arch": ("mlp",),
}


@attrs.frozen(eq=False)
class OfficialNextStep1:
    """What ``load_official`` returns: the loaded ``model`` (eval mode), the ``text_tokenizer`` with
    NextStep-1's special-token roles, the ``config`` it was built from and ``source``, the parsed
    ``config.json``."""

    model: NextStep1
    text_tokenizer: BPETokenizer
    config: NextStep1Config
    source: dict[str, Any]


# --- config.json ----------------------------------------------------------------------------------

def config_from_official(
    config_json: Mapping[str, Any], *, image_area_id: int | None = None
) -> NextStep1Config:
    """The ``NextStep1Config`` an official ``config.json`` (parsed) describes (module docstring).

    ``image_area_id``: the id of ``<|image_area|>``, which ``config.json`` does not hold
    (``load_official`` takes it from the tokenizer); None means ``boi - 1``, the order in which
    NextStep adds its tokens (``[PAD]``, ``<|image_area|>``, ``<|begin_of_image|>``, ...).
    """
    if not isinstance(config_json, Mapping):
        raise TypeError(
            f"config_json must be the parsed config.json (a dict), got {type(config_json).__name__}"
        )
    c = config_json
    model_type = c.get("model_type")
    if model_type is not None and model_type not in MODEL_TYPES:
        raise ValueError(
            f"model_type = {model_type!r} is not a NextStep model (expected one of {MODEL_TYPES}); "
            "pass the directory of a NextStep-1 checkpoint such as stepfun-ai/NextStep-1-Large"
        )
    absent = [k for k in REQUIRED if c.get(k) is None]
    if absent:
        raise ValueError(
            f"config.json lacks {absent}; an official NextStep config states the model sizes and the "
            f"special ids {list(CONFIG_IDS)}"
        )
    _check_supported(c)
    head = _head_fields(c)
    if "rope_theta" not in c:
        warnings.warn(
            f"config.json has no rope_theta; using {LLAMA_ROPE_THETA:g}, the default of the official "
            "loader (LlamaConfig/Qwen2Config). Qwen2.5-based NextStep checkpoints use 1e6: add "
            '"rope_theta": 1000000.0 if this checkpoint is one',
            stacklevel=2,
        )
    dim = c["hidden_size"]
    attention_bias = c.get("attention_bias", False)
    o_bias = c.get("o_attention_bias")
    layer = DecoderLayerConfig(
        dim=dim,
        num_heads=c["num_attention_heads"],
        num_kv_heads=c.get("num_key_value_heads"),
        head_dim=c.get("head_dim"),
        hidden=c["intermediate_size"],
        qkv_bias=attention_bias,
        o_bias=attention_bias if o_bias is None else o_bias,
        mlp_bias=c.get("mlp_bias", False),
        norm_eps=c.get("rms_norm_eps", 1e-6),
    )
    latent_dim = head["channels"] * head["patch"] ** 2
    boi = c["boi"]
    return NextStep1Config(
        layer=layer,
        num_layers=c["num_hidden_layers"],
        vocab_size=c["vocab_size"],
        head=FlowHeadConfig(cond_dim=dim, latent_dim=latent_dim, width=head["width"], depth=head["depth"],
                            batch_mul=head["batch_mul"]),
        pad_id=c["pad_token_id_added"],
        image_area_id=boi - 1 if image_area_id is None and isinstance(boi, int) else image_area_id,
        boi=boi,
        eoi=c["eoi"],
        image_placeholder_id=c["image_placeholder_id"],
        latent_dim=latent_dim,
        rope_theta=float(c.get("rope_theta", LLAMA_ROPE_THETA)),
        max_seq_len=c.get("max_position_embeddings", 2048),
        lm_loss_weight=float(c.get("lm_loss_weight", 0.01)),
        image_loss_weight=float(head["image_loss_weight"]),
        tie_word_embeddings=c.get("tie_word_embeddings", False),
        use_gen_pos_embed=c.get("use_gen_pos_embed", False),
        gen_pos_grid=c.get("base_image_grid_size", 32),
        init_std=float(c.get("initializer_range", 0.02)),
    )


def _check_supported(c: Mapping[str, Any]) -> None:
    """Options whose other values change the model in ways this implementation does not have."""
    act = c.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act = {act!r} is not supported; NextStep-1's MLP is SwiGLU (\"silu\")")
    scaling = c.get("rope_scaling")
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, Mapping) else scaling
        if kind != "default":
            raise ValueError(
                f"rope_scaling = {scaling!r} is not supported; NextStep-1 uses plain 1D RoPE "
                "(rope_scaling null)"
            )
    if c.get("use_sliding_window"):
        raise ValueError(
            "use_sliding_window = true is not supported; NextStep-1 attends to the whole sequence"
        )
    for key, allowed in _SUPPORTED_CHOICES.items():
        value = c.get(key, allowed[0])
        if value not in allowed:
            raise ValueError(
                f"{key} = {value!r} is not supported; this implementation has {key} {allowed[0]!r} only "
                "(NextStep-1.1's flow-matching MLP head)"
            )
    create = c.get("create_kwargs")
    snr = create.get("snr_type", "lognorm") if isinstance(create, Mapping) else "lognorm"
    if snr != "lognorm":
        raise ValueError(
            f"create_kwargs.snr_type = {snr!r} is not supported; the head's training times are "
            "logit-normal (\"lognorm\")"
        )
    for key, value in c.items():
        if "mlp_ratio" in key and value not in (None, 1, 1.0):
            raise ValueError(
                f"{key} = {value!r} is not supported; the flow-matching head's blocks are width x width "
                "(mlp_ratio 1.0)"
            )


def _head_fields(c: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (v1, v11, default) in _HEAD_FIELDS.items():
        a, b = c.get(v1), c.get(v11)
        if a is not None and b is not None and a != b:
            raise ValueError(
                f"config.json states both {v1} = {a!r} (NextStep-1 spelling) and {v11} = {b!r} "
                "(NextStep-1.1 spelling); they must agree"
            )
        out[name] = default if a is None and b is None else (a if a is not None else b)
    return out


# --- loading --------------------------------------------------------------------------------------

def load_official(
    model_dir: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> OfficialNextStep1:
    """Build and load the NextStep-1 in an official checkpoint directory (module docstring).

    Floating-point weights are cast to ``dtype`` (the official weights are fp32 on disk; the
    official pipelines run bf16). Missing or mis-shaped keys raise
    ``nxcore.checkpoint.CheckpointMismatchError`` (a ``ValueError``) naming the first few and
    counting them; keys the model lacks raise too when ``strict``, else they are skipped with a
    warning. Token ids that ``config.json``, ``added_tokens.json`` and ``tokenizer.json`` disagree
    on raise ``ValueError`` naming both values.
    """
    if not isinstance(model_dir, str | os.PathLike):
        raise TypeError(
            f"model_dir must be a directory path (str or os.PathLike), got {type(model_dir).__name__}"
        )
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.bfloat16, got {dtype!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r}") from err
    directory = Path(model_dir).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} is not a directory; pass the official model directory holding {CONFIG_FILE}, "
            f"{TOKENIZER_FILE} and the safetensors weights"
        )
    source = _read_json(directory / CONFIG_FILE, what="the model config")
    if not isinstance(source, dict):
        raise ValueError(f"{directory / CONFIG_FILE} must hold a JSON object, got {type(source).__name__}")
    tokenizer = _load_tokenizer(directory, source)
    try:
        config = config_from_official(source, image_area_id=tokenizer.special_id(SPECIALS.image_area))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{directory / CONFIG_FILE}: {err}") from err
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"{directory / TOKENIZER_FILE} has ids up to {tokenizer.vocab_size - 1} but config.json's "
            f"vocab_size is {config.vocab_size}; the tokenizer and the model come from different checkpoints"
        )
    with torch.device("meta"):
        model = NextStep1(config)
    _load_weights(model, directory, dtype=dtype, device=device, strict=strict)
    return OfficialNextStep1(model=model.eval(), text_tokenizer=tokenizer, config=config, source=source)


def _read_json(path: Path, *, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; an official NextStep-1 directory holds {what} there")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-download it") from err


def _load_tokenizer(directory: Path, source: Mapping[str, Any]) -> BPETokenizer:
    """``tokenizer.json`` with NextStep-1's roles, after checking every special id three ways."""
    file = directory / TOKENIZER_FILE
    plain = BPETokenizer.from_file(file)
    ids = plain.special_tokens
    lacking = [s for s in SPECIALS.strings if s not in ids]
    if lacking:
        raise ValueError(
            f"{file} lacks the special tokens {lacking}; NextStep-1's tokenizer adds {list(SPECIALS.strings)}"
        )
    added_path = directory / ADDED_TOKENS_FILE
    if added_path.is_file():
        added = _read_json(added_path, what="the added token ids")
        if not isinstance(added, dict):
            raise ValueError(f"{added_path} must hold a JSON object of token text -> id")
        for text in SPECIALS.strings:
            if text not in added:
                raise ValueError(f"{added_path} lacks {text!r} (tokenizer.json gives it id {ids[text]})")
            if added[text] != ids[text]:
                raise ValueError(
                    f"{added_path} maps {text!r} to {added[text]} but {file} gives it id {ids[text]}; the "
                    "tokenizer files come from different checkpoints"
                )
    for field, text in CONFIG_IDS.items():
        value = source.get(field)
        if value is not None and value != ids[text]:
            raise ValueError(
                f"{directory / CONFIG_FILE} has {field} = {value} but {file} gives {text!r} id {ids[text]}; "
                "the config and the tokenizer come from different checkpoints"
            )
    return BPETokenizer(plain.tokenizer, _roles(directory, ids))


def _roles(directory: Path, ids: Mapping[str, int]) -> SpecialTokens:
    """NextStep-1's roles, plus BOS/EOS when ``tokenizer_config.json`` names special tokens for them
    (Qwen2.5: no BOS, EOS ``<|endoftext|>``)."""
    path = directory / TOKENIZER_CONFIG_FILE
    if not path.is_file():
        return SPECIALS
    data = _read_json(path, what="the tokenizer settings")
    roles: dict[str, str] = {}
    for role in ("bos", "eos"):
        value = data.get(f"{role}_token") if isinstance(data, dict) else None
        text = value.get("content") if isinstance(value, dict) else value
        if isinstance(text, str) and text in ids:
            roles[role] = text
    return SPECIALS.replace(**roles)


def _shard_files(directory: Path) -> dict[Path, list[str] | None]:
    """``{safetensors file: keys to read from it (None: all)}``."""
    index = directory / INDEX_FILE
    if index.is_file():
        data = _read_json(index, what="the shard index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise ValueError(f"{index} has no \"weight_map\" object of key -> shard file; re-download it")
        files: dict[Path, list[str] | None] = {}
        for key, name in weight_map.items():
            if Path(name).name != name or name in ("", ".", ".."):
                raise ValueError(f"{index} names shard {name!r} outside its directory; refusing to read it")
            files.setdefault(directory / name, []).append(key)  # type: ignore[union-attr]
        absent = [p.name for p in files if not p.is_file()]
        if absent:
            shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            raise FileNotFoundError(
                f"{index} names shard(s) missing from {directory}: {shown}; the download is incomplete"
            )
        return files
    if (directory / SINGLE_FILE).is_file():
        return {directory / SINGLE_FILE: None}
    present = sorted(p.name for p in directory.iterdir())
    pickles = [n for n in present if n.endswith((".bin", ".pt", ".pth"))]
    detail = (f"; {pickles} are torch pickles, which are refused because unpickling can run code: convert "
              "them to safetensors in an environment you trust") if pickles else ""
    raise FileNotFoundError(
        f"{directory} holds no safetensors weights (expected {INDEX_FILE} + shards or {SINGLE_FILE}){detail}"
    )


@attrs.frozen
class _Entry:
    file: Path
    name: str  # the key in the file
    shape: tuple[int, ...]
    dtype: torch.dtype


def _headers(files: Mapping[Path, list[str] | None]) -> Iterator[tuple[str, _Entry]]:
    for path, keys in files.items():
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                present = set(f.keys())
                for key in (sorted(present) if keys is None else keys):
                    if key not in present:
                        raise ValueError(
                            f"{path.parent / INDEX_FILE} says {key!r} is in {path.name}, but that shard does "
                            "not hold it; the index and the shards come from different downloads"
                        )
                    s = f.get_slice(key)
                    kind = s.get_dtype()
                    if kind not in _SAFETENSORS_DTYPES:
                        raise ValueError(f"{path} stores {key!r} as {kind}, a dtype this loader cannot read")
                    yield key, _Entry(path, key, tuple(s.get_shape()), _SAFETENSORS_DTYPES[kind])
        except SafetensorError as err:
            raise ValueError(f"{path} is truncated or corrupt ({err}); re-download it") from err


_INV_FREQ = re.compile(r"(^|\.)inv_freq$")


def _rename(key: str, config: NextStep1Config) -> str | None:
    """Our key for an official key; None: not a weight of this model (dropped)."""
    key = key.removeprefix("model.")
    if _INV_FREQ.search(key):
        return None
    if key == "gen_pos_embed" and not config.use_gen_pos_embed:
        return None
    if key == "lm_head.weight" and config.tie_word_embeddings:
        return None
    return key


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    return "float" if dtype.is_floating_point else "int"


def _load_weights(model: NextStep1, directory: Path, *, dtype: torch.dtype, device: torch.device,
                  strict: bool) -> None:
    config = model.config
    expected = model.state_dict()  # meta tensors: names, shapes, dtypes
    entries: dict[str, _Entry] = {}
    for key, entry in _headers(_shard_files(directory)):
        ours = _rename(key, config)
        if ours is None:
            continue
        if ours in entries:
            raise ValueError(
                f"{directory}: both {entries[ours].name!r} and {key!r} name the weight {ours!r} (one "
                "with the 'model.' prefix, one without); the checkpoint is inconsistent"
            )
        entries[ours] = entry
    computed = {"gen_pos_embed"} if config.use_gen_pos_embed and "gen_pos_embed" not in entries else set()
    missing = tuple(k for k in expected if k not in entries and k not in computed)
    unexpected = tuple(k for k in entries if k not in expected)
    mismatched = tuple(
        KeyMismatch(k, tuple(e.shape), entries[k].shape, e.dtype, entries[k].dtype)
        for k, e in expected.items()
        if k in entries and (tuple(e.shape) != entries[k].shape or _kind(e.dtype) != _kind(entries[k].dtype))
    )
    report = LoadReport(missing, unexpected, mismatched)
    if missing or mismatched or (strict and unexpected):
        raise CheckpointMismatchError(_message(report, directory, config, expected, entries), report)
    if unexpected:
        warnings.warn(
            f"load_official({str(directory)!r}, strict=False) skipped {len(unexpected)} key(s) the model "
            f"lacks: {list(unexpected[:_SHOW])}{' ...' if len(unexpected) > _SHOW else ''}",
            stacklevel=3,
        )
    by_file: dict[Path, list[str]] = {}
    for key in expected:
        if key in entries:
            by_file.setdefault(entries[key].file, []).append(key)
    for path, keys in by_file.items():  # one shard at a time, read and cast one tensor at a time
        loaded: dict[str, Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in keys:
                t = f.get_tensor(entries[key].name)
                loaded[key] = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                del t
        model.load_state_dict(loaded, strict=False, assign=True)  # the tensors become the parameters
        del loaded
    if computed:
        table = sincos_2d(config.dim, config.gen_pos_grid)[None].to(device=device, dtype=dtype)
        model.load_state_dict({"gen_pos_embed": table}, strict=False, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # unreachable when the key check above is right
        raise RuntimeError(f"load_official left {left[:_SHOW]} unloaded; this is a bug in the loader")


def _message(report: LoadReport, directory: Path, config: NextStep1Config, expected: Mapping[str, Tensor],
             entries: Mapping[str, _Entry]) -> str:
    parts = [
        f"checkpoint {directory} does not match the NextStep1 its config.json describes: "
        f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, "
        f"{len(report.mismatched)} mis-shaped key(s)"
    ]

    def listing(title: str, rows: list[str]) -> None:
        more = f"\n  ... and {len(rows) - _SHOW} more" if len(rows) > _SHOW else ""
        parts.append(f"{title}:\n" + "\n".join(f"  {r}" for r in rows[:_SHOW]) + more)

    if report.missing:
        listing(f"{len(report.missing)} missing official key(s) (the model has them, the files do not)",
                [f"{k} {tuple(expected[k].shape)}" for k in report.missing])
    if report.unexpected:
        listing(f"{len(report.unexpected)} unexpected key(s) (in the files, not in the model)",
                [f"{entries[k].name} {entries[k].shape} in {entries[k].file.name}"
                 for k in report.unexpected])
    if report.mismatched:
        listing(f"{len(report.mismatched)} mis-shaped key(s)", [str(m) for m in report.mismatched])
    if any(k.endswith("o_proj.bias") for k in report.missing):
        parts.append(
            "hint: o_proj gets a bias when config.json's o_attention_bias (falling back to "
            "attention_bias) is true; NextStep-1 checkpoints have none: set \"o_attention_bias\": false"
        )
    if any(k == "lm_head.weight" for k in report.missing):
        parts.append("hint: without lm_head.weight the text head must be tied: \"tie_word_embeddings\": true")
    if report.unexpected and not report.missing:
        parts.append("pass strict=False to skip the unexpected keys")
    return "\n".join(parts)
