"""Training metrics: one JSON line per logging step, TensorBoard too when it is installed.

``run_dir/metrics.jsonl`` holds one object per call to ``MetricsLogger.log``::

    {"step": 120, "time": 1718000000.123, "loss": 3.21, "loss/t2i": 3.05, "loss/scale_03": 2.7,
     "tokens_per_s": 51234.5, "mfu": 0.41, "lr": 0.0003}

``time`` is wall-clock seconds since the epoch. Keys are free-form; ``nx plot`` groups them by
family: ``loss`` and ``loss/<task>``, ``loss/scale_<k>``, ``tokens_per_s``, ``mfu``, ``lr``, and
any other ``<prefix>/<name>``. Each line is flushed when written, so a killed run keeps everything
it logged (at worst its last line is torn, and readers skip a torn last line). Only rank 0 writes.

Resuming from a checkpoint at step N (``resume_step=N``) first drops the lines with step >= N,
which the killed run logged after that checkpoint, so a curve never has two points for one step.
A run that starts afresh (``resume_step=None``) replaces whatever metrics the directory held.
"""

from __future__ import annotations

import json
import math
import operator
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from nxcore.checkpoint import atomic_write_text

__all__ = [
    "METRICS_FILE",
    "MetricsLogger",
    "Throughput",
    "metrics_path",
    "mfu",
    "read_metrics",
    "transformer_flops_per_token",
]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("step", "time")


class MetricsLogger:
    """Append metrics to ``run_dir/metrics.jsonl`` (and TensorBoard when available), on rank 0 only.

    Args:
        run_dir: the run's directory; created if missing.
        rank: this process's rank; every rank but 0 writes nothing (so every rank can call ``log``).
        tensorboard: also write TensorBoard scalars to ``run_dir/tensorboard`` when
            ``torch.utils.tensorboard`` imports (the ``tensorboard`` package is installed);
            silently skipped otherwise.
        resume_step: the step the run resumes from; existing lines with step >= it are dropped
            first. ``None`` starts a fresh run: existing lines are all dropped, with a warning.

    Use as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        rank: int = 0,
        tensorboard: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.rank = operator.index(rank)
        if resume_step is not None:
            resume_step = _check_step(resume_step, "resume_step")
        self.resume_step = resume_step
        self._file: TextIO | None = None
        self._writer: Any = None
        self._closed = False
        self._warned_nonfinite: set[str] = set()
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dropped, kept = _drop_from(self.path, resume_step or 0)
        if resume_step is None and dropped:
            warnings.warn(
                f"{self.path} held {dropped} lines from an earlier run; a fresh run (resume_step="
                "None) replaces them. Pass resume_step=N when resuming from a checkpoint at step N",
                stacklevel=2,
            )
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            self._writer = _summary_writer(self.run_dir / TENSORBOARD_DIR, resume_step or 0)

    @property
    def writes(self) -> bool:
        """Whether ``log`` writes anything (rank 0 and not closed)."""
        return self._file is not None

    @property
    def tensorboard(self) -> bool:
        """Whether TensorBoard scalars are written too."""
        return self._writer is not None

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Append ``{"step": step, "time": now, **values}`` as one line and flush it.

        Values are numbers (Python, NumPy or 0-d tensors); non-finite ones are written as ``null``
        with one warning per key. Every rank checks its arguments; only rank 0 writes.
        """
        if self._closed:
            raise ValueError(f"MetricsLogger for {self.run_dir} is closed; log before close()")
        step = _check_step(step, "step")
        if not isinstance(values, Mapping):
            raise TypeError(f"values must be a mapping of name to number, got {type(values).__name__}")
        record: dict[str, Any] = {"step": step, "time": round(time.time(), 3)}
        finite: dict[str, float] = {}
        for key, value in values.items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"metric names must be non-empty strings, got {key!r}")
            if key in _RESERVED:
                raise ValueError(f"metric name {key!r} is reserved for the line itself; rename it")
            number = _number(key, value)
            if math.isfinite(number):
                record[key] = number
                finite[key] = number
            else:
                record[key] = None
                if key not in self._warned_nonfinite and self._file is not None:
                    self._warned_nonfinite.add(key)
                    warnings.warn(
                        f"metric {key!r} is {number} at step {step}; written as null (warned once "
                        "per metric)",
                        stacklevel=2,
                    )
        if self._file is None:
            return
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, number in finite.items():
                self._writer.add_scalar(key, number, step, walltime=record["time"])

    def close(self) -> None:
        """Flush and close the file (and the TensorBoard writer); safe to call twice."""
        self._closed = True
        file, self._file = self._file, None
        writer, self._writer = self._writer, None
        if file is not None:
            file.flush()
            os.fsync(file.fileno())
            file.close()
        if writer is not None:
            writer.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MetricsLogger({str(self.run_dir)!r}, rank={self.rank}, writes={self.writes}, "
            f"tensorboard={self.tensorboard})"
        )


def metrics_path(run: str | os.PathLike) -> Path:
    """``run/metrics.jsonl`` for a run directory, ``run`` itself for a file."""
    path = Path(run)
    if path.is_dir():
        path = path / METRICS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no {METRICS_FILE} in {path.parent}; is it a run directory? Training writes it "
                "there with MetricsLogger"
            )
        return path
    if not path.exists():
        raise FileNotFoundError(f"no run directory or metrics file at {path}")
    return path


def read_metrics(run: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a run directory's ``metrics.jsonl`` (or of that file), in order.

    Values written as ``null`` (non-finite) come back as ``None``. A torn last line (a run killed
    while writing it) is skipped; a malformed line elsewhere is a ``ValueError`` naming it.
    """
    path = metrics_path(run)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        record = _parse(line)
        if record is None:
            if number == len(lines) and not line.endswith("\n"):
                continue  # torn by a kill mid-write
            raise ValueError(
                f"{path}:{number} is not a metrics record (a JSON object with an integer step): "
                f"{line.strip()[:80]!r}"
            )
        records.append(record)
    return records


class Throughput:
    """Tokens per second over the last ``window`` updates, timed with ``time.perf_counter``.

    Call ``update(tokens)`` once per step with the tokens processed since the previous call (or
    since construction / ``reset()``, which marks the start). ``reset()`` after a pause that is not
    training (evaluation, a checkpoint save) keeps it out of the rate. ``total_tokens`` counts every
    token given to ``update`` and survives ``reset()``.
    """

    def __init__(self, window: int = 20, *, clock: Callable[[], float] = time.perf_counter) -> None:
        window = operator.index(window)
        if window < 1:
            raise ValueError(f"window must be at least 1 update, got {window}")
        self.window = window
        self.total_tokens = 0
        self._clock = clock
        self._marks: deque[tuple[float, int]] = deque(maxlen=window + 1)
        self.reset()

    def reset(self) -> None:
        """Forget the window and start timing now."""
        self._marks.clear()
        self._marks.append((self._clock(), 0))

    def update(self, tokens: int) -> float:
        """Record ``tokens`` processed since the previous mark; return the current tokens/s."""
        tokens = operator.index(tokens)
        if tokens < 0:
            raise ValueError(f"tokens must be >= 0, got {tokens}")
        self._marks.append((self._clock(), tokens))
        self.total_tokens += tokens
        return self.tokens_per_s

    @property
    def tokens_per_s(self) -> float:
        """Tokens per second over the window; NaN before the first update."""
        if len(self._marks) < 2:
            return math.nan
        elapsed = self._marks[-1][0] - self._marks[0][0]
        tokens = sum(n for _, n in list(self._marks)[1:])
        return tokens / elapsed if elapsed > 0 else math.nan


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: ``tokens_per_s * flops_per_token / peak_flops``, a fraction.

    The three must describe the same hardware: tokens/s of one rank with one device's peak, or
    tokens/s of the whole job with ``world_size * peak``. Peak is the dense bf16 figure from the
    data sheet (989e12 for an H100 SXM, 312e12 for an A100).
    """
    if not peak_flops > 0:
        raise ValueError(f"peak_flops must be > 0, got {peak_flops}")
    if tokens_per_s < 0 or flops_per_token < 0:
        raise ValueError(
            f"tokens_per_s ({tokens_per_s}) and flops_per_token ({flops_per_token}) must be >= 0"
        )
    return tokens_per_s * flops_per_token / peak_flops


def transformer_flops_per_token(params: int, layers: int, hidden: int, seq: int) -> float:
    """Training FLOPs per token of a decoder transformer: ``6·N + 12·L·h·s`` (PaLM, appendix B).

    - ``6·N``: every parameter that multiplies an activation costs 2 FLOPs per token forward
      (multiply and add) and 4 backward (gradients of inputs and of weights). ``N`` counts the
      matmul weights: leave out embedding tables, which are looked up, not multiplied.
    - ``12·L·h·s``: attention's two parameter-free matmuls, ``Q·Kᵀ`` and ``softmax·V``, cost
      ``2·s·h`` each per token and layer forward (a token attends to ``s`` positions of width
      ``h``), so ``4·L·h·s`` forward and three times that with the backward pass. The causal
      mask's skipped half is counted, as is customary, so MFU stays comparable across kernels.

    ``hidden`` is the attention width (heads × head_dim), ``seq`` the attended sequence length.
    """
    for name, value in (("params", params), ("layers", layers), ("hidden", hidden), ("seq", seq)):
        if operator.index(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    return float(6 * params + 12 * layers * hidden * seq)


# --- internals -----------------------------------------------------------------------------------

def _check_step(step: object, name: str) -> int:
    if isinstance(step, bool):
        raise TypeError(f"{name} must be an integer, got {step!r}")
    try:
        value = operator.index(step)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(step).__name__} {step!r}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _number(key: str, value: object) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # type: ignore[return-value]  # ints stay ints in the file
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(
            f"metric {key!r} must be a number (a Python, NumPy or 0-d tensor scalar), got "
            f"{type(value).__name__} {value!r:.60}"
        ) from None


def _parse(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    return record


def _drop_from(path: Path, step: int) -> tuple[int, int]:
    """Rewrite ``path`` (atomically) without its lines at or after ``step``; (dropped, kept)."""
    if not path.exists():
        return 0, 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept: list[str] = []
    dropped = unreadable = 0
    for line in lines:
        if not line.strip():
            continue
        record = _parse(line)
        if record is None or not line.endswith("\n"):
            unreadable += record is None and line.endswith("\n")
            dropped += 1
        elif record["step"] < step:
            kept.append(line)
        else:
            dropped += 1
    if unreadable:
        warnings.warn(f"dropped {unreadable} unreadable lines from {path}", stacklevel=3)
    if dropped or len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))
    return dropped, len(kept)


def _summary_writer(log_dir: Path, purge_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the tensorboard package is optional
        return None
    # purge_step hides the events a killed run wrote at or after the resumed step, like the JSONL
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
