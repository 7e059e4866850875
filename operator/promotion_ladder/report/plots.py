"""The report's figures, drawn with matplotlib's object API on the Agg canvas (no display, no pyplot state).

matplotlib is the optional `report` extra: it is imported only when a figure is drawn.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.rules import Decision
from ..core.stability import HostBlockTau, StagePairTau
from ..core.status import LadderStatus, StageStatus
from .build import CELL_VALUES, GPU_HOURS, PROGRESS, RANK_FLOW, STABILITY, gpu_h, stability_of
from .source import ReportError

if TYPE_CHECKING:
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.figure import Figure as MplFigureType
    from matplotlib.transforms import Transform

STATE_COLORS = {"Succeeded": "#4caf50", "Failed": "#d62728", "Running": "#ff9800", "Pending": "#d9d9d9"}
BLOCK_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
SEED_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
STATE_COLORS["Queued"] = "#9e9e9e"  # a cell whose Job a batch queue (Kueue) holds
STATE_MARKERS = {"Failed": "x", "Running": ">", "Queued": "|", "Pending": "."}
DPI = 100
FAILED_RING = "#d62728"
CELL_WIDTH = 0.62  # cell_values: the spread of one candidate's cells around its x


@dataclass(frozen=True)
class Figure:
    key: str
    title: str
    alt: str
    png: bytes


def _mpl():
    try:
        import matplotlib
    except ImportError:
        raise ReportError(
            "the report's plots need matplotlib, which is not installed; "
            "install the report extra: pip install 'promotion-ladder[report]'"
        ) from None
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure as MplFigure

    return MplFigure


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _candidate_colors(s: LadderStatus) -> dict[str, str]:
    import matplotlib

    names = list(dict.fromkeys(e.candidate for st in s.stages if st.decision for e in st.decision.ranking))
    names += [c.candidate for st in s.stages for c in st.cells if c.candidate not in names]
    names = list(dict.fromkeys(names))
    # tab20's dark shades first, then its light ones: the first ten candidates get distinct strong colours.
    cmap = matplotlib.colormaps["tab20"]
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {n: matplotlib.colors.to_hex(cmap(order[i % 20])) for i, n in enumerate(names)}


def rank_flow(s: LadderStatus) -> Figure:
    """Bump chart: rank of every candidate at each decided stage; where it was cut; the winner."""
    MplFigure = _mpl()
    decided = [(st.name, st.decision) for st in s.stages if st.decision is not None]
    n_max = max(len(d.ranking) for _, d in decided)
    fig = MplFigure(figsize=(10, max(4.0, 0.42 * n_max + 1.6)), layout="constrained")
    ax = fig.add_subplot()
    colors = _candidate_colors(s)
    winner = s.verdict.winner if s.verdict else None
    for name, color in colors.items():
        path = _rank_path(s, name)
        if path.xs:
            _draw_rank_path(ax, name, color, path, winner)
    _rank_flow_axes(ax, s, n_max)
    _rank_flow_legend(ax, decided)
    fig.suptitle("Rank flow across stages", fontsize=12, x=0.02, ha="left")
    final = s.stages[-1].name
    cut = [e.candidate for name, d in decided if name != final for e in d.ranking if not e.promoted_by]
    alt = (
        f"Rank flow across {len(decided)} decided stages; "
        + (f"winner {winner}; " if winner else "")
        + f"{len(cut)} candidates cut"
    )
    return Figure(RANK_FLOW, "Rank flow across stages", alt, _png(fig))


@dataclass
class _RankPath:
    """One candidate's ranks over the decided stages (x = stage index), and its marked points."""

    xs: list[int] = field(default_factory=list)
    ys: list[int] = field(default_factory=list)
    cut_at: tuple[int, int] | None = None
    kept: list[tuple[int, int]] = field(default_factory=list)  # promoted by the keep rule
    broken: list[tuple[int, int]] = field(default_factory=list)  # had failed cells


def _rank_path(s: LadderStatus, name: str) -> _RankPath:
    path = _RankPath()
    last_x = len(s.stages) - 1
    for x, st in enumerate(s.stages):
        d = st.decision
        e = next((e for e in d.ranking if e.candidate == name), None) if d else None
        if e is None:
            continue
        path.xs.append(x)
        path.ys.append(e.rank)
        if e.promoted_by == "keep":
            path.kept.append((x, e.rank))
        if not e.complete:
            path.broken.append((x, e.rank))
        if x < last_x and not e.promoted_by:
            path.cut_at = (x, e.rank)
    return path


def _draw_rank_path(ax: Axes, name: str, color: str, path: _RankPath, winner: str | None) -> None:
    xs, ys, cut_at = path.xs, path.ys, path.cut_at
    lw, z = (3.2, 4) if name == winner else (1.6, 3)
    ax.plot(xs, ys, "-o", color=color, lw=lw, ms=6, zorder=z)
    for kx, ky in path.kept:
        ax.plot(kx, ky, "s", ms=12, mfc="none", mec="black", mew=1.2, zorder=5)
    for bx, by in path.broken:
        ax.plot(bx, by, "o", ms=17, mfc="none", mec=FAILED_RING, mew=2, zorder=5)
    if cut_at:
        ax.plot(*cut_at, "X", ms=11, color="#333333", zorder=6)
    ax.annotate(
        name,
        (xs[0], ys[0]),
        xytext=(-10, 0),
        textcoords="offset points",
        ha="right",
        va="center",
        fontsize=9,
        color=color if name != winner else "black",
        fontweight="bold" if name == winner else None,
    )
    if xs[-1] > xs[0] and not cut_at:
        ax.annotate(
            name + ("  (winner)" if name == winner else ""),
            (xs[-1], ys[-1]),
            xytext=(10, 0),
            textcoords="offset points",
            ha="left",
            va="center",
            fontsize=9,
            fontweight="bold" if name == winner else None,
        )
    if name == winner:
        ax.plot(xs[-1], ys[-1], "*", ms=20, color="gold", mec="black", zorder=7)


def _rank_flow_axes(ax: Axes, s: LadderStatus, n_max: int) -> None:
    """Stages along x (with how many entered each), ranks down y, best at the top."""
    ax.set_xticks(range(len(s.stages)))
    state_note = {"Running": "\n(running)", "Pending": "\n(not reached)"}
    ax.set_xticklabels(
        [
            f"{st.name}\n{st.entered if st.entered is not None else '-'} entered{state_note.get(st.state, '')}"
            for st in s.stages
        ]
    )
    ax.set_xlim(-1.4, len(s.stages) - 1 + 1.3)
    ax.set_ylim(n_max + 0.7, 0.3)
    ax.set_yticks(range(1, n_max + 1))
    ax.set_ylabel("rank in stage (1 = best)")
    ax.grid(axis="y", alpha=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _rank_flow_legend(ax: Axes, decided: list[tuple[str, Decision]]) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="X", ls="", color="#333333", ms=9, label="cut at this stage"),
        Line2D([], [], marker="s", ls="", mfc="none", mec="black", ms=10, label="promoted by keep"),
        Line2D([], [], marker="*", ls="", color="gold", mec="black", ms=14, label="winner"),
    ]
    if any(not e.complete for _, d in decided for e in d.ranking):
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                ls="",
                mfc="none",
                mec=FAILED_RING,
                mew=2,
                ms=12,
                label="had failed cells (incomplete)",
            )
        )
    ax.legend(handles=handles, loc="lower left", fontsize=8, frameon=False, ncols=4, bbox_to_anchor=(0, 1.0))


def cell_values(st: StageStatus, metric: str) -> Figure:
    """One stage: every cell's value by candidate, coloured by host block, marker by seed; failures marked."""
    MplFigure = _mpl()
    from matplotlib.transforms import blended_transform_factory

    d = st.decision
    order = [e.candidate for e in d.ranking] if d else list(dict.fromkeys(c.candidate for c in st.cells))
    promoted = set(d.promoted) if d else set()
    blocks = list(dict.fromkeys(c.host_block for c in st.cells))
    seeds = list(dict.fromkeys(c.seed for c in st.cells))
    fig = MplFigure(figsize=(max(6.0, 0.62 * len(order) + 2.5), 3.8), layout="constrained")
    ax = fig.add_subplot()
    bottom = blended_transform_factory(ax.transData, ax.transAxes)
    states_seen: set[str] = set()
    for x, cand in enumerate(order):
        if cand in promoted:
            ax.axvspan(x - 0.45, x + 0.45, color="#e8f5e9", zorder=0)
        states_seen |= _candidate_cells(ax, st, x, cand, blocks, seeds, bottom)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=35, ha="right", fontsize=8)
    for lbl in ax.get_xticklabels():
        if lbl.get_text() in promoted:
            lbl.set_fontweight("bold")
    ax.set_xlim(-0.6, len(order) - 0.4)
    vals = [c.value for c in st.cells if c.value is not None]
    if vals:
        lo, hi = min(vals), max(vals)
        pad = (hi - lo) * 0.12 or 0.01
        ax.set_ylim(lo - 2.2 * pad, hi + pad)  # room at the bottom for failed / pending markers
    ax.set_ylabel(metric, fontsize=9)
    ax.grid(axis="y", alpha=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    _cell_values_legend(ax, blocks, seeds, bool(promoted), states_seen)
    ax.set_title(f"Stage {st.name} (budget {st.budget}): value per cell", fontsize=10, loc="left")
    n_failed = sum(c.state == "Failed" for c in st.cells)
    alt = f"Stage {st.name}: {len(st.cells)} cells of {len(order)} candidates on host blocks {', '.join(blocks)}" + (
        f"; {n_failed} failed" if n_failed else ""
    )
    return Figure(CELL_VALUES + st.name, f"Stage {st.name}: values per cell", alt, _png(fig))


def _candidate_cells(
    ax: Axes, st: StageStatus, x: int, cand: str, blocks: list[str], seeds: list[int], bottom: Transform
) -> set[str]:
    """One candidate's cells side by side around x: values as points (colour = host block, marker =
    seed) under the mean's bar; the others as state markers at the bottom. The states so marked."""
    n_cells = len(blocks) * len(seeds)
    states_seen: set[str] = set()
    ok: list[float] = []
    for c in (c for c in st.cells if c.candidate == cand):
        j = blocks.index(c.host_block) * len(seeds) + seeds.index(c.seed)
        dx = (j - (n_cells - 1) / 2) * (CELL_WIDTH / max(n_cells, 1))
        if c.state == "Succeeded" and c.value is not None:
            ok.append(c.value)
            ax.plot(
                x + dx,
                c.value,
                SEED_MARKERS[seeds.index(c.seed) % len(SEED_MARKERS)],
                ms=6,
                color=BLOCK_COLORS[blocks.index(c.host_block) % len(BLOCK_COLORS)],
                zorder=3,
            )
        else:
            states_seen.add(c.state)
            mk = STATE_MARKERS[c.state]
            ax.plot(
                x + dx,
                0.04,
                mk,
                ms=9 if c.state == "Failed" else 7,
                mew=2,
                color=STATE_COLORS[c.state],
                transform=bottom,
                zorder=4,
                clip_on=False,
            )
    if ok:
        m = sum(ok) / len(ok)
        ax.plot([x - CELL_WIDTH / 2, x + CELL_WIDTH / 2], [m, m], color="black", lw=1.2, zorder=2)
    return states_seen


def _cell_values_legend(ax: Axes, blocks: list[str], seeds: list[int], promoted: bool, states_seen: set[str]) -> None:
    from matplotlib.lines import Line2D

    handles: list[Artist] = [
        Line2D([], [], marker="o", ls="", color=BLOCK_COLORS[i % len(BLOCK_COLORS)], label=f"host {b}")
        for i, b in enumerate(blocks)
    ]
    if len(seeds) > 1:
        handles += [
            Line2D([], [], marker=SEED_MARKERS[i % len(SEED_MARKERS)], ls="", color="gray", label=f"seed {sd}")
            for i, sd in enumerate(seeds)
        ]
    handles.append(Line2D([], [], color="black", lw=1.2, label="mean"))
    if promoted:
        from matplotlib.patches import Patch

        handles.append(Patch(color="#e8f5e9", label="promoted"))
    for state in ("Failed", "Running", "Queued", "Pending"):
        if state in states_seen:
            mk = STATE_MARKERS[state]
            handles.append(Line2D([], [], marker=mk, ls="", mew=2, color=STATE_COLORS[state], label=state.lower()))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def gpu_hours(s: LadderStatus) -> Figure:
    """Executed GPU-hours (stacked by stage) next to each counterfactual."""
    MplFigure = _mpl()
    import matplotlib

    g = s.gpu_hours
    assert g is not None  # the cost section asks for this figure only when the status has GPU-hours
    cfs = g.counterfactuals
    fig = MplFigure(figsize=(8.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis"]
    bottom = 0.0
    n = max(len(g.by_stage), 1)
    for i, (stage, h) in enumerate(g.by_stage.items()):
        ax.bar(0, h, bottom=bottom, color=cmap(0.15 + 0.7 * i / n), width=0.6, label=f"stage {stage}: {gpu_h(h)}")
        bottom += h
    top = max([g.total] + [c.gpu_hours for c in cfs]) or 1.0
    ax.text(0, g.total + top * 0.015, f"{gpu_h(g.total)}", ha="center", va="bottom", fontsize=10, fontweight="bold")
    running = s.phase in ("Pending", "Running")
    for i, c in enumerate(cfs, start=1):
        ax.bar(i, c.gpu_hours, color="#bdbdbd", width=0.6, edgecolor="#757575")
        label = gpu_h(c.gpu_hours) + ("" if running else f"\nsaved {c.saved_percent:.1f}%")
        ax.text(i, c.gpu_hours + top * 0.015, label, ha="center", va="bottom", fontsize=9)
    ax.axhline(g.total, color="#333333", lw=0.8, ls="--", zorder=0)
    ax.set_xticks(range(len(cfs) + 1))
    ax.set_xticklabels(
        ["executed" + (" so far" if s.phase in ("Pending", "Running") else "")]
        + [f"all {c.entered} from\n{c.stage} to the end" for c in cfs],
        fontsize=8,
    )
    ax.set_ylim(0, top * 1.22)
    ax.set_ylabel("GPU-hours")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(
        fontsize=7,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        frameon=False,
        title="executed by stage",
        title_fontsize=8,
    )
    ax.set_title("GPU-hours: executed vs counterfactuals", fontsize=11, loc="left")
    alt = f"GPU-hours executed {gpu_h(g.total)}; counterfactuals " + ", ".join(
        f"{gpu_h(c.gpu_hours)} (all {c.entered} from {c.stage})" for c in cfs
    )
    return Figure(GPU_HOURS, "GPU-hours executed vs counterfactuals", alt, _png(fig))


def progress(s: LadderStatus) -> Figure:
    """The current stage as a grid: one row per candidate, one column per cell, coloured by state."""
    MplFigure = _mpl()
    from matplotlib.patches import Patch, Rectangle

    st = next(st for st in s.stages if st.name == s.current_stage)
    cands = list(dict.fromkeys(c.candidate for c in st.cells))
    labels = list(dict.fromkeys(f"{c.host_block}/{c.seed}" for c in st.cells))
    fig = MplFigure(figsize=(max(5.0, 1.1 * len(labels) + 3.5), 0.42 * len(cands) + 1.8), layout="constrained")
    ax = fig.add_subplot()
    for c in st.cells:
        x, y = labels.index(f"{c.host_block}/{c.seed}"), cands.index(c.candidate)
        ax.add_patch(Rectangle((x + 0.04, y + 0.06), 0.92, 0.88, color=STATE_COLORS[c.state]))
        txt = f"{c.value:.4f}" if c.value is not None else c.state.lower()
        ax.text(
            x + 0.5,
            y + 0.5,
            txt,
            ha="center",
            va="center",
            fontsize=8,
            color="white" if c.state in ("Succeeded", "Failed") else "black",
        )
    ax.set_xlim(0, len(labels))
    ax.set_ylim(len(cands), 0)
    ax.set_xticks([i + 0.5 for i in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([i + 0.5 for i in range(len(cands))])
    ax.set_yticklabels(cands, fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    counts = {k: sum(c.state == k for c in st.cells) for k in STATE_COLORS}
    done = counts["Succeeded"] + counts["Failed"]
    ax.legend(
        handles=[Patch(color=STATE_COLORS[k], label=f"{k.lower()} {v}") for k, v in counts.items()],
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        frameon=False,
    )
    title = f"Stage {st.name} in progress: {done} of {len(st.cells)} cells done"
    fig.suptitle(title, fontsize=11, x=0.02, ha="left")
    alt = f"{title}; " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items())
    return Figure(PROGRESS, f"Stage {st.name} in progress", alt, _png(fig))


def stability(s: LadderStatus) -> Figure:
    """Tau-b between consecutive stages (a line) and between host blocks per stage (a heat map)."""
    MplFigure = _mpl()
    import matplotlib

    st = stability_of(s)
    pairs, blocks = st.stages, st.host_blocks
    panels = (1 if pairs else 0) + (1 if blocks else 0)
    fig = MplFigure(figsize=(10, 3.9), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False, width_ratios=[1.5, 1][:panels] if panels == 2 else None)[0]
    cmap = matplotlib.colormaps["RdYlGn"]
    norm = matplotlib.colors.Normalize(-1, 1)
    if pairs:
        _stage_pairs_panel(axes[0], pairs, cmap, norm)
    if blocks:
        _host_blocks_panel(fig, axes[-1], blocks, cmap, norm)
    fig.suptitle("Rank stability (Kendall tau-b)", fontsize=12, x=0.02, ha="left")
    alt = _stability_alt(pairs, blocks)
    return Figure(STABILITY, "Rank stability: tau-b between stages and between host blocks", alt, _png(fig))


def _stage_pairs_panel(ax: Axes, pairs: list[StagePairTau], cmap: Colormap, norm: Normalize) -> None:
    """Tau-b between consecutive stages along a line; n/a where undefined."""
    xs = list(range(len(pairs)))
    ys = [t.kendall_tau for t in pairs]
    ax.axhspan(0.8, 1.05, color="#e8f5e9", zorder=0)
    ax.axhline(0, color="#9e9e9e", lw=0.8, zorder=1)
    ax.plot(
        [x for x, y in zip(xs, ys, strict=True) if y is not None],
        [y for y in ys if y is not None],
        "-",
        color="#1f77b4",
        lw=1.8,
        zorder=2,
    )
    for x, t in zip(xs, pairs, strict=True):
        if t.kendall_tau is None:
            ax.text(
                x,
                0.0,
                "n/a",
                ha="center",
                va="center",
                fontsize=9,
                color="#757575",
                bbox=dict(boxstyle="round", fc="white", ec="#bdbdbd"),
            )
            continue
        ax.plot(x, t.kendall_tau, "o", ms=9, color=cmap(norm(t.kendall_tau)), mec="#333333", zorder=3)
        ax.annotate(
            f"{t.kendall_tau:.2f}\n{t.candidates} cand.",
            (x, t.kendall_tau),
            xytext=(0, -12),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=8,
        )
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{t.from_} \u2192 {t.to}" for t in pairs], fontsize=9)
    ax.set_xlim(-0.5, len(pairs) - 0.5)
    ax.set_ylim(-1.05, 1.12)
    ax.set_ylabel("tau-b (1 same order, 0 unrelated)", fontsize=9)
    ax.set_xlabel("stage pair (shorter \u2192 longer budget)", fontsize=9)
    ax.grid(axis="y", alpha=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title("Consecutive stages: does the shorter budget predict the longer?", fontsize=10, loc="left")


def _host_blocks_panel(
    fig: MplFigureType, ax: Axes, blocks: list[HostBlockTau], cmap: Colormap, norm: Normalize
) -> None:
    """Tau-b between host blocks as a heat map: one row per pair of blocks, one column per stage."""
    stages = list(dict.fromkeys(t.stage for t in blocks))
    labels = list(dict.fromkeys(f"{t.a} vs {t.b}" for t in blocks))
    grid = [[math.nan] * len(stages) for _ in labels]
    for b in blocks:
        if b.kendall_tau is not None:
            grid[labels.index(f"{b.a} vs {b.b}")][stages.index(b.stage)] = b.kendall_tau
    cm = cmap.with_extremes(bad="#e0e0e0")
    im = ax.imshow(grid, cmap=cm, norm=norm, aspect="equal")
    for b in blocks:
        i, j = labels.index(f"{b.a} vs {b.b}"), stages.index(b.stage)
        dark = b.kendall_tau is not None and abs(b.kendall_tau) > 0.6  # the colour map's dark ends
        ax.text(
            j,
            i,
            "n/a" if b.kendall_tau is None else f"{b.kendall_tau:.2f}",
            ha="center",
            va="center",
            fontsize=9,
            color="white" if dark else "black",
        )
    ax.set_xticks(range(len(stages)))
    ax.set_xticklabels(stages, fontsize=9)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=9)
    ax.tick_params(length=0)
    ax.set_xlabel("stage", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="tau-b", location="bottom" if len(labels) < 3 else "right")
    ax.set_title("Host blocks: same ranking on each?", fontsize=10, loc="left")


def _stability_alt(pairs: list[StagePairTau], blocks: list[HostBlockTau]) -> str:
    return "Rank stability: " + "; ".join(
        [
            f"{t.from_} to {t.to} tau " + ("undefined" if t.kendall_tau is None else f"{t.kendall_tau:.2f}")
            for t in pairs
        ]
        + [
            f"{t.stage} {t.a} vs {t.b} tau " + ("undefined" if t.kendall_tau is None else f"{t.kendall_tau:.2f}")
            for t in blocks
        ]
    )


def draw(keys: list[str], s: LadderStatus, metric: str) -> dict[str, Figure]:
    """Draw the figures a report's sections name."""
    out: dict[str, Figure] = {}
    for k in keys:
        if k == RANK_FLOW:
            out[k] = rank_flow(s)
        elif k == GPU_HOURS:
            out[k] = gpu_hours(s)
        elif k == PROGRESS:
            out[k] = progress(s)
        elif k == STABILITY:
            out[k] = stability(s)
        elif k.startswith(CELL_VALUES):
            st = next(st for st in s.stages if st.name == k[len(CELL_VALUES) :])
            out[k] = cell_values(st, metric)
        else:  # pragma: no cover - a key build.py names but nobody draws
            raise KeyError(k)
    return out
