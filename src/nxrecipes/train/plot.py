"""PNG curves of training metrics (``nx plot RUN [RUN ...]``).

One panel per metric family, in this order: loss (total and per task), loss per scale, throughput,
MFU, learning rate, then any other family (the part of a key before its first ``/``). Each curve is
drawn raw (faint) under an exponentially smoothed line; the learning rate is drawn unsmoothed.
Steps where a metric was not finite (``null`` in the file) are ticked in red under the panel.

Several runs are overlaid with one colour per run and a legend by run name; every metric then gets
its own panel, except the per-scale losses, which get one panel per run.

matplotlib (the ``dev`` extra) is imported only when plotting, through the Agg backend, with no
pyplot global state.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np

from nxcore.checkpoint import atomic_path
from nxrecipes.train.metrics import METRICS_FILE, metrics_path, read_metrics

__all__ = ["plot_run"]

PLOT_FILE = "metrics.png"
_SCALE = re.compile(r"^loss/scale[_-]?(\d+)$")
_NOT_METRICS = ("step", "time")
_RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
_KEY_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")

Run = str | os.PathLike | Sequence[Mapping[str, Any]]


def plot_run(
    run_dir_or_metrics: Run | Sequence[Run] | Mapping[str, Run],
    out_png: str | os.PathLike | None = None,
    keys: Sequence[str] | None = None,
) -> Path:
    """Render the metrics of one run, or several overlaid, to a PNG; return its path.

    Args:
        run_dir_or_metrics: a run directory (or its ``metrics.jsonl``), a list of records as
            ``read_metrics`` returns them, a list of those (several runs, named after their
            directories), or a mapping of run name to either.
        out_png: where to write. Default: ``RUN/metrics.png`` for one run, and for several
            ``metrics-<name>-<name>....png`` in the directory that holds them.
        keys: the metrics to draw: exact names, globs (``loss/scale_*``), or families (``loss``
            selects ``loss`` and every ``loss/...``). Default: all.
    """
    runs = _runs(run_dir_or_metrics)
    out = _out_path(runs, out_png)
    mpl = _matplotlib()
    panels = _panels(runs, keys)
    with mpl["rc_context"](_STYLE):
        figure = _figure(mpl, runs, panels)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            figure.savefig(tmp, format="png", dpi=_DPI)
    return out


# --- runs ----------------------------------------------------------------------------------------

@dataclass
class _Run:
    name: str
    records: list[Mapping[str, Any]]
    directory: Path | None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps and values (NaN where null) of the records that have ``key``."""
        rows = [(r["step"], r[key]) for r in self.records if key in r]
        steps = np.array([s for s, _ in rows], dtype=np.float64)
        values = np.array([math.nan if v is None else float(v) for _, v in rows], dtype=np.float64)
        return steps, values

    @functools.cached_property
    def keys(self) -> dict[str, None]:
        """The metric names, in the order they first appear (a dict: ordered, fast membership)."""
        seen: dict[str, None] = {}
        for record in self.records:
            seen.update(dict.fromkeys(k for k in record if k not in _NOT_METRICS))
        return seen


def _is_records(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and len(value) > 0
        and all(isinstance(r, Mapping) for r in value)
    )


def _one_run(value: Run, name: str | None) -> _Run:
    if _is_records(value):
        records = list(value)  # type: ignore[arg-type]
        for record in records:
            step = record.get("step")
            if not isinstance(step, int) or isinstance(step, bool):
                raise ValueError(f"every metrics record needs an integer 'step', got {dict(record)!r:.80}")
        return _Run(name or "run", records, None)
    if isinstance(value, str | os.PathLike):
        path = metrics_path(value)
        records = read_metrics(path)
        if not records:
            raise ValueError(f"{path} holds no metrics yet; plot once the run has logged a step")
        directory = path.parent
        default = directory.name if path.name == METRICS_FILE else path.stem
        return _Run(name or default or "run", records, directory)
    raise TypeError(
        "a run is a run directory, a metrics.jsonl path or a list of metric records, got "
        f"{type(value).__name__}"
    )


def _runs(value: Any) -> list[_Run]:
    if isinstance(value, Mapping):
        runs = [_one_run(v, str(k)) for k, v in value.items()]
    elif isinstance(value, str | os.PathLike) or _is_records(value):
        runs = [_one_run(value, None)]
    elif isinstance(value, Sequence) and not isinstance(value, bytes):
        runs = [_one_run(v, None) for v in value]
        _unique_names(runs)
    else:
        raise TypeError(f"expected a run directory, records, or several of them; got {type(value).__name__}")
    if not runs:
        raise ValueError("no runs to plot; pass at least one run directory")
    return runs


def _unique_names(runs: list[_Run]) -> None:
    """Name runs with the same directory name by as many parent directories as tells them apart."""
    if len({r.name for r in runs}) == len(runs) or any(r.directory is None for r in runs):
        return
    parts = [r.directory.resolve().parts for r in runs]  # type: ignore[union-attr]
    for depth in range(2, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            for run, name in zip(runs, names, strict=True):
                run.name = name
            return


def _out_path(runs: list[_Run], out_png: str | os.PathLike | None) -> Path:
    if out_png is not None:
        return Path(out_png)
    if any(r.directory is None for r in runs):
        raise ValueError("records given without a run directory: pass out_png to say where the PNG goes")
    if len(runs) == 1:
        return runs[0].directory / PLOT_FILE  # type: ignore[operator]
    parent = Path(os.path.commonpath([str(r.directory.resolve().parent) for r in runs]))  # type: ignore[union-attr]
    stem = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", r.name) for r in runs)
    name = f"metrics-{stem}.png" if len(stem) <= 80 else f"metrics-{len(runs)}-runs.png"
    return parent / name


# --- panels --------------------------------------------------------------------------------------

@dataclass
class _Line:
    run: _Run
    key: str
    label: str
    color: str


@dataclass
class _Panel:
    title: str
    family: str
    lines: list[_Line]
    legend_title: str | None = None
    log: bool = False


_FAMILY_ORDER = ("loss", "loss_scale", "throughput", "mfu", "lr")
_FAMILY_TITLES = {
    "loss": "Loss: total and per task",
    "loss_scale": "Loss per scale",
    "throughput": "Throughput (tokens/s)",
    "mfu": "MFU (model FLOPs utilisation)",
    "lr": "Learning rate",
}


def _family(key: str) -> str:
    head = key.split("/", 1)[0]
    if _SCALE.match(key):
        return "loss_scale"
    if head in ("tokens_per_s", "samples_per_s", "throughput"):
        return "throughput"
    return head


def _key_order(key: str) -> tuple[int, str]:
    scale = _SCALE.match(key)
    if scale:
        return int(scale.group(1)), key
    return (0 if "/" not in key else 1), key


def _selected(all_keys: list[str], patterns: Sequence[str] | None) -> list[str]:
    if patterns is None:
        return all_keys
    if isinstance(patterns, str):
        patterns = [patterns]
    chosen = [
        k for k in all_keys if any(fnmatchcase(k, p) or k.startswith(p.rstrip("/") + "/") for p in patterns)
    ]
    if not chosen:
        raise ValueError(
            f"no metric matches keys {list(patterns)}; the runs logged: {', '.join(sorted(all_keys))}"
        )
    return chosen


def _panels(runs: list[_Run], patterns: Sequence[str] | None) -> list[_Panel]:
    all_keys = list(dict.fromkeys(k for run in runs for k in run.keys))
    if not all_keys:
        raise ValueError("the metrics hold steps but no values to plot")
    families: dict[str, list[str]] = {}
    for key in sorted(_selected(all_keys, patterns), key=_key_order):
        families.setdefault(_family(key), []).append(key)
    order = sorted(
        families,
        key=lambda f: (_FAMILY_ORDER.index(f) if f in _FAMILY_ORDER else len(_FAMILY_ORDER), f),
    )
    several = len(runs) > 1
    panels: list[_Panel] = []
    log = {family: _wants_log(runs, keys) for family, keys in families.items() if family.startswith("loss")}
    for family in order:
        keys = families[family]
        title = _FAMILY_TITLES.get(family, family)
        if family == "loss_scale":
            for run in runs:
                lines = [
                    _Line(run, k, _SCALE.match(k).group(1), _scale_color(i, len(keys)))  # type: ignore[union-attr]
                    for i, k in enumerate(keys)
                    if k in run.keys
                ]
                if lines:
                    name = f"{title}: {run.name}" if several else title
                    panels.append(_Panel(name, family, lines, "scale", log[family]))
        elif several:
            for key in keys:
                lines = [
                    _Line(run, key, run.name, _RUN_COLORS[i % len(_RUN_COLORS)])
                    for i, run in enumerate(runs)
                    if key in run.keys
                ]
                panels.append(_Panel(_key_title(family, key), family, lines, log=log.get(family, False)))
        else:
            run = runs[0]
            colors = iter(_KEY_COLORS * (len(keys) // len(_KEY_COLORS) + 1))
            lines = [
                _Line(run, k, _short_label(family, k), "#222222" if k == "loss" else next(colors))
                for k in keys
            ]
            panels.append(_Panel(title, family, lines, log=log.get(family, False)))
    return panels


def _wants_log(runs: list[_Run], keys: list[str]) -> bool:
    """Log scale for a loss family whose values span more than 20x (ignoring the extreme 1%)."""
    values = [v for run in runs for k in keys if k in run.keys for v in run.series(k)[1]]
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0 or finite.min() <= 0:
        return False
    low, high = np.percentile(finite, [1, 99])
    return bool(high / low > 20)


def _short_label(family: str, key: str) -> str:
    if key == "loss":
        return "total"
    if family == "loss":
        return key.split("/", 1)[1]
    return key


def _key_title(family: str, key: str) -> str:
    if key == "loss":
        return "Loss (total)"
    if family == "loss":
        return f"Loss: {key.split('/', 1)[1]}"
    if family in _FAMILY_TITLES and key == family or key == "tokens_per_s":
        return _FAMILY_TITLES[family]
    return key


def _scale_color(index: int, count: int) -> Any:
    from matplotlib import colormaps

    return colormaps["viridis"](0.92 * index / max(1, count - 1))


# --- drawing -------------------------------------------------------------------------------------

_DPI = 110
_PANEL_SIZE = (5.4, 3.3)
_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "figure.facecolor": "white",
}


def _matplotlib() -> dict[str, Any]:
    try:
        import matplotlib
        from matplotlib import ticker
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "plotting metrics needs matplotlib, which is not installed: pip install 'nx[dev]' "
            "(or pip install matplotlib)"
        ) from err
    return {
        "rc_context": matplotlib.rc_context,
        "Figure": Figure,
        "Canvas": FigureCanvasAgg,
        "ticker": ticker,
    }


def _figure(mpl: dict[str, Any], runs: list[_Run], panels: list[_Panel]) -> Any:
    columns = 2 if len(panels) == 4 else min(3, len(panels))
    rows = -(-len(panels) // columns)
    width, height = _PANEL_SIZE
    figure = mpl["Figure"](figsize=(width * columns, height * rows + 0.6), layout="constrained")
    mpl["Canvas"](figure)  # Agg, whatever the process-wide backend is
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        _draw(ax, panel, mpl["ticker"], legend=len(runs) == 1)
        if panel.family == "loss_scale":
            _scale_colorbar(figure, ax, panel)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if len(runs) == 1:
        last = max(r["step"] for r in runs[0].records)
        figure.suptitle(f"{runs[0].name}  ·  last step {last:,}", fontsize=12, fontweight="bold")
    else:  # the legend names the runs; a title saying the same would only crowd it
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=_RUN_COLORS[i % len(_RUN_COLORS)], lw=2.5) for i in range(len(runs))]
        figure.legend(
            handles, [r.name for r in runs], loc="outside upper center", ncols=min(len(runs), 6),
            fontsize=10.5, handlelength=2.5, columnspacing=2.5,
        )
    return figure


def _scale_colorbar(figure: Any, ax: Any, panel: _Panel) -> None:
    """A discrete colour bar names the scales: 12-18 legend entries would cover the curves."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    count = len(panel.lines)
    cmap = ListedColormap([line.color for line in panel.lines])
    mappable = ScalarMappable(norm=BoundaryNorm(np.arange(count + 1) - 0.5, count), cmap=cmap)
    bar = figure.colorbar(mappable, ax=ax, pad=0.01, fraction=0.05, aspect=25)
    step = max(1, -(-count // 10))
    ticks = list(range(0, count, step))
    bar.set_ticks(ticks, labels=[str(int(panel.lines[i].label)) for i in ticks])
    bar.set_label(panel.legend_title or "", labelpad=2)
    bar.outline.set_visible(False)
    bar.ax.tick_params(length=0, labelsize=7.5)


def _draw(ax: Any, panel: _Panel, ticker: Any, *, legend: bool) -> None:
    smooth = panel.family != "lr"
    raw_alpha = 0.22 if len(panel.lines) <= 4 else 0.1
    finite_all: list[np.ndarray] = []
    bad_steps: list[np.ndarray] = []
    max_step = 0.0
    for line in panel.lines:
        steps, values = line.run.series(line.key)
        if steps.size:
            max_step = max(max_step, float(steps.max()))
        ok = np.isfinite(values)
        bad_steps.append(steps[~ok])
        steps, values = steps[ok], values[ok]
        if not steps.size:
            continue
        finite_all.append(values)
        smoothed = _ema(values) if smooth else None
        if smoothed is None:
            marker = "o" if steps.size <= 12 else None
            ax.plot(steps, values, color=line.color, lw=1.6, marker=marker, ms=3, label=line.label)
        else:
            ax.plot(steps, values, color=line.color, lw=0.8, alpha=raw_alpha)
            ax.plot(steps, smoothed, color=line.color, lw=1.7, label=line.label)
    bad = np.concatenate(bad_steps) if bad_steps else np.empty(0)
    if bad.size:
        ax.plot(
            bad, np.zeros_like(bad), transform=ax.get_xaxis_transform(), ls="none", marker="|",
            ms=9, mew=1.5, color="#d62728", label="not finite", clip_on=False,
        )
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    if max_step >= 10_000:
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_count))
    values = np.concatenate(finite_all) if finite_all else np.empty(0)
    if not values.size:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes, color="0.4")
    elif panel.log:
        ax.set_yscale("log")
    if panel.family == "mfu":
        ax.yaxis.set_major_formatter(ticker.PercentFormatter(xmax=1.0))
    elif panel.family == "throughput":
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(_count))
    elif panel.family == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    if (legend and len(panel.lines) > 1 and panel.family != "loss_scale") or bad.size:
        columns = 1 if len(panel.lines) <= 7 else 2 if len(panel.lines) <= 14 else 3
        ax.legend(title=panel.legend_title, ncols=columns, loc="best", title_fontsize=8, handlelength=1.5)


def _count(x: float, _pos: object = None) -> str:
    """Tick label for counts: 950, 5006.5, 52k, 12.5k, 1.2M."""
    if abs(x) >= 1e6:
        return f"{x / 1e6:g}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def _ema(values: np.ndarray) -> np.ndarray | None:
    """Debiased exponential moving average spanning about 1/30 of the points; None if too few."""
    span = values.size / 30
    if span < 1.5:
        return None
    from scipy.signal import lfilter

    alpha = 2.0 / (span + 1.0)
    num, den = [alpha], [1.0, alpha - 1.0]
    return lfilter(num, den, values) / lfilter(num, den, np.ones_like(values))
