"""Kernel dispatch: backends declare what they support, an op walks its priority list.

A :class:`Backend` is data: a name, the devices and dtypes it takes, a shape limit, per-dtype
tolerances (``atol``/``rtol``, the contract the parity tests read), an availability check and an
argument check. ``Backend.not_supported_reasons(*args, **kwargs)`` lists every reason it cannot run
a call; an argument a backend cannot honour is a reason, never silently dropped.

An :class:`Op` holds backends in priority order. The backend for a call comes from, first to last:

1. ``backend="name"`` on the call (a pin);
2. ``with use_backend("name"):`` (local override);
3. the ``NX_KERNELS`` environment variable, ``auto|reference|torch|triton|xformers`` (global);
4. otherwise ``auto``: the first backend in priority order that can run the call.

A pinned backend (1) that cannot run raises ``ValueError`` with every reason. An override (2, 3)
naming a backend the op does not have leaves that op on ``auto``; one naming a backend the op has
is a pin. ``auto`` falls back quietly, and never picks a backend on a device type outside its
``auto_devices`` (Triton on CPU tensors, i.e. the interpreter, must be asked for by name). The
choice is cached per (op, request, device type, dtype, shape class) and logged once at debug level.

Nothing here imports triton or xformers or initialises CUDA: availability checks look for the
package (``importlib.util.find_spec``) and the implementation is imported on first use.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "Op",
    "clear_cache",
    "cuda_reasons",
    "eager_inference",
    "get_op",
    "parse_mode",
    "registered_ops",
    "requested_mode",
    "triton_reasons",
    "use_backend",
    "xformers_reasons",
]

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("reference", "torch", "triton", "xformers")
MODES = ("auto", *BACKEND_NAMES)
ENV = "NX_KERNELS"

# use_backend's stack: a plain list, not a ContextVar, so torch.compile can trace reads (and guard
# on them); overrides are process-wide while the block runs.
_override: list[str] = []
_cache: dict[tuple, Backend] = {}
_available: dict[tuple, tuple[str, ...]] = {}
_ops: dict[str, Op] = {}
_env_modes: dict[str, str] = {}


def parse_mode(value: str, source: str = ENV) -> str:
    """``value`` lower-cased and stripped if it names a mode; an unknown spelling is an error."""
    mode = value.strip().lower()
    if mode not in MODES:
        raise ValueError(f"{source}={value!r} is not understood; use one of {', '.join(MODES)}")
    return mode


def requested_mode(environ: Mapping[str, str] | None = None) -> str:
    """The active global request: ``use_backend`` if inside one, else ``NX_KERNELS`` (default auto)."""
    if _override:
        return _override[-1]
    value = (os.environ if environ is None else environ).get(ENV, "")
    return _parse_env(value) if value else "auto"


def _parse_env(value: str) -> str:
    """``parse_mode`` of an ``NX_KERNELS`` value, memoised per spelling (read at every op call)."""
    mode = _env_modes.get(value)
    if mode is None:
        mode = parse_mode(value) if value.strip() else "auto"
        if len(_env_modes) < 64:
            _env_modes[value] = mode
    return mode


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Within the block every op uses backend ``name`` if it has one (``"auto"`` restores choice)."""
    _override.append(parse_mode(name, source="use_backend"))
    try:
        yield
    finally:
        _override.pop()


def clear_cache() -> None:
    """Forget every cached choice (after changing the environment a backend checks)."""
    _cache.clear()
    _available.clear()


# ------------------------------------------------------------------------------------------------
# availability checks: device type -> reasons (empty = available); none imports eagerly


def eager_inference(*tensors: torch.Tensor | None) -> bool:
    """Whether an op may call its kernel directly instead of through its ``torch.library`` custom op:
    eager (not traced by ``torch.compile``) and no gradient needed for any of ``tensors``. The custom
    op exists for tracing and autograd; skipping its dispatch saves ~0.1 ms per call, which is most of
    a small model's decode step."""
    if torch.compiler.is_compiling():
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


_TRUE = frozenset({"1", "true", "on", "yes"})


def cuda_reasons() -> list[str]:
    """Why CUDA cannot be used here (``torch.cuda.is_available`` does not initialise CUDA)."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return [f"this torch build ({torch.__version__}) has no CUDA support"]
    if not torch.cuda.is_available():
        return ["no CUDA device is visible"]
    return []


def _triton_reasons(device_type: str, interpreting: bool) -> tuple[str, ...]:
    if importlib.util.find_spec("triton") is None:
        return ("triton is not installed (pip install 'nx[triton]')",)
    if device_type == "cpu":
        if not interpreting:
            return ("triton runs CPU tensors only under the interpreter; set TRITON_INTERPRET=1 "
                    "before triton is imported (tests do)",)
        return ()
    if device_type == "cuda":
        return tuple(cuda_reasons())
    return (f"triton does not run on {device_type} tensors",)


def triton_reasons(device_type: str) -> list[str]:
    """Triton runs CUDA tensors, and CPU tensors under ``TRITON_INTERPRET=1``."""
    key = ("triton", device_type, _interpreting())
    if key not in _available:
        _available[key] = _triton_reasons(device_type, key[2])
    return list(_available[key])


def _xformers_reasons(device_type: str) -> tuple[str, ...]:
    if importlib.util.find_spec("xformers") is None:
        return ("xformers is not installed (pip install 'nx[cuda]')",)
    if device_type != "cuda":
        return (f"xformers kernels run CUDA tensors, not {device_type}",)
    if cuda_reasons():
        return tuple(cuda_reasons())
    try:  # xformers imports fine without its compiled ops; check they actually loaded
        import xformers  # noqa: PLC0415

        if not getattr(xformers, "_has_cpp_library", False):
            return ("xformers is installed but its compiled ops (xformers._C) did not load",)
    except Exception as err:  # pragma: no cover - depends on the install
        return (f"importing xformers failed: {type(err).__name__}: {err}",)
    return ()


def xformers_reasons(device_type: str) -> list[str]:
    """xformers runs CUDA tensors when its compiled extension loaded."""
    key = ("xformers", device_type)
    if key not in _available:
        _available[key] = _xformers_reasons(device_type)
    return list(_available[key])


def _always(device_type: str) -> list[str]:
    return []


# ------------------------------------------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True, eq=False)
class Backend:
    """One implementation of an op, described as data.

    ``impl`` is ``"module:attribute"``, imported on first use. ``available(device_type)`` returns
    reasons the backend cannot run on that device type here (missing package, no driver).
    ``check(*args, **kwargs)`` returns reasons specific to the call's arguments. The first tensor
    argument decides the device and dtype; ``max_last_dim`` bounds its last dimension.
    ``auto_devices`` (default: all of ``devices``) are the device types where ``auto`` may pick
    it; elsewhere it runs only when asked for by name (Triton on CPU: the interpreter, for tests).
    """

    name: str
    impl: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    atol: Mapping[torch.dtype, float]
    rtol: Mapping[torch.dtype, float]
    max_last_dim: int | None = None
    available: Callable[[str], list[str]] = _always
    check: Callable[..., list[str]] | None = None
    auto_devices: tuple[str, ...] | None = None
    description: str = ""
    _loaded: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if self.name not in BACKEND_NAMES:
            raise ValueError(f"backend name {self.name!r} must be one of {BACKEND_NAMES}")
        missing = [d for d in self.dtypes if d not in self.atol or d not in self.rtol]
        if missing:
            raise ValueError(f"backend {self.name!r} declares no atol/rtol for {missing}")

    def tolerance(self, dtype: torch.dtype) -> dict[str, float]:
        """``{"atol": ..., "rtol": ...}`` for comparing this backend with the reference."""
        return {"atol": self.atol[dtype], "rtol": self.rtol[dtype]}

    def availability_reasons(self, device_type: str) -> list[str]:
        if device_type not in self.devices:
            return [f"runs on {'/'.join(self.devices)} tensors, not {device_type}"]
        reasons = list(self.available(device_type))
        if device_type == "cuda" and not reasons:
            reasons = cuda_reasons()
        return reasons

    def not_supported_reasons(self, *args, **kwargs) -> list[str]:
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if not tensors:
            return ["the call has no tensor argument"]
        x = tensors[0]
        reasons = self.availability_reasons(x.device.type)
        if x.dtype not in self.dtypes:
            names = ", ".join(_dtype_name(d) for d in self.dtypes)
            reasons.append(f"dtype {_dtype_name(x.dtype)} is not supported (supports {names})")
        if self.max_last_dim is not None and x.ndim and x.shape[-1] > self.max_last_dim:
            reasons.append(f"last dimension {x.shape[-1]} exceeds the limit {self.max_last_dim}")
        if any(t.device != x.device for t in tensors):
            reasons.append(f"tensors are on different devices: {sorted({str(t.device) for t in tensors})}")
        if self.check is not None:
            reasons += self.check(*args, **kwargs)
        return reasons

    def load(self):
        """The implementation object (imported on first call)."""
        if "impl" not in self._loaded:
            module, _, attr = self.impl.partition(":")
            # sys.modules first: torch.compile cannot trace import_module, but can read a dict
            loaded = sys.modules.get(module) or importlib.import_module(module)
            self._loaded["impl"] = getattr(loaded, attr)
        return self._loaded["impl"]


def _no_class(*args, **kwargs) -> tuple:
    return ()


@dataclass(frozen=True, eq=False)
class Op:
    """An op's backends in priority order; ``shape_class(*args, **kwargs)`` keys the cache."""

    name: str
    backends: tuple[Backend, ...]
    shape_class: Callable[..., tuple] = _no_class
    module: str = field(default="", compare=False)  # where it was declared (filled in)

    def __post_init__(self):
        if not self.module:  # the first caller outside this module declared the op
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__") == __name__:
                frame = frame.f_back
            object.__setattr__(self, "module", "" if frame is None else frame.f_globals["__name__"])
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError(f"op {self.name!r} lists a backend twice: {names}")
        object.__setattr__(self, "_by_name", {b.name: b for b in self.backends})
        if self.name in _ops:
            raise ValueError(f"an op named {self.name!r} is already registered")
        _ops[self.name] = self

    def backend(self, name: str) -> Backend:
        b = self._by_name.get(name)
        if b is not None:
            return b
        raise ValueError(
            f"op {self.name!r} has no backend {name!r}; its backends are "
            f"{', '.join(b.name for b in self.backends)}"
        )

    def select(self, *args, backend: str | None = None, **kwargs) -> Backend:
        """The backend for this call (see the module docstring for the order of precedence)."""
        if backend is not None:
            request, pinned = parse_mode(backend, source="backend"), True
        else:
            request, pinned = requested_mode(), False
            if request != "auto" and request not in self._by_name:
                request = "auto"
        x = args[0] if args and isinstance(args[0], torch.Tensor) else next(
            (a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        key = (
            self.name,
            request,
            None if x is None else x.device.type,
            None if x is None else x.dtype,
            self.shape_class(*args, **kwargs),
            _interpreting(),
        )
        cached = _cache.get(key)
        if cached is not None:
            return cached
        if request == "auto":
            rejected: dict[str, list[str]] = {}
            for b in self.backends:
                reasons = b.not_supported_reasons(*args, **kwargs)
                if x is not None and b.auto_devices is not None and x.device.type not in b.auto_devices:
                    reasons.append(f"on {x.device.type} it runs only when asked for by name "
                                   f"(backend={b.name!r}, use_backend or {ENV})")
                if not reasons:
                    chosen = b
                    break
                rejected[b.name] = reasons
            else:
                raise ValueError(f"no backend of {self.name} can run this call:\n{_format(rejected)}")
        else:
            chosen = self.backend(request)
            reasons = chosen.not_supported_reasons(*args, **kwargs)
            if reasons:
                how = f"backend={backend!r}" if pinned else f"{ENV} / use_backend={request!r}"
                raise ValueError(
                    f"{self.name}: backend {request!r} ({how}) cannot run this call:\n"
                    f"{_format({request: reasons})}\nunpin it to let {self.name} choose"
                )
        _cache[key] = chosen
        if not torch.compiler.is_compiling():  # dynamo does not trace logging calls
            logger.debug("%s: using backend %r for %s", self.name, chosen.name, key[1:])
        return chosen

    def availability(self, device_type: str) -> dict[str, list[str]]:
        """For each backend, why it cannot run on ``device_type`` here (empty = available)."""
        return {b.name: b.availability_reasons(device_type) for b in self.backends}


def _format(rejected: Mapping[str, list[str]]) -> str:
    return "\n".join(f"  {name}: {reason}" for name, reasons in rejected.items() for reason in reasons)


def registered_ops() -> dict[str, Op]:
    """Every op registered so far (import ``nxkernels.info`` to register them all)."""
    return dict(_ops)


def get_op(name: str) -> Op:
    if name not in _ops:
        raise ValueError(f"no op named {name!r}; registered: {', '.join(sorted(_ops))}")
    return _ops[name]
