r"""The tour's figures drawn with matplotlib (the optional ``plot`` extra; NumPy only).

Every figure's numbers come from a function of :mod:`refmem.figures`
(tested there, without plotting); this module only draws them. Each figure
is a ``WIDTH x HEIGHT`` pixel PNG with labelled axes, a legend and a title
that states what it shows. matplotlib is imported when a figure is drawn,
never when refmem is imported; without it :func:`write_figures` raises
:class:`PlotExtraMissing` naming the extra to install.
"""

from __future__ import annotations

import os

import numpy as np

from . import figures

WIDTH, HEIGHT, DPI = 960, 600, 120  # pixels of every PNG (figsize = WIDTH / DPI x HEIGHT / DPI inches)
INSTALL_HINT = "matplotlib is not installed; install the plot extra: pip install 'refmem[plot]'"


class PlotExtraMissing(ImportError):
    """matplotlib (the ``plot`` extra) is not installed."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotExtraMissing(INSTALL_HINT) from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _figure(plt):
    return plt.subplots(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)


def plot_recall(ax, data):
    n = data["pairs"]
    ax.plot(n, data["linear_attention"], label="linear attention (adds v k^T)")
    ax.plot(n, data["delta_rule"], label=f"delta rule, explicit step (beta = {data['beta']:g})")
    ax.plot(n, data["longhorn"], label=f"Longhorn, implicit step (beta = {data['beta']:g})")
    ax.axvline(data["d"], color="gray", ls=":", label=f"n = d = {data['d']}")
    ax.axhline(1.0, color="gray", ls="--", lw=0.8, label="an empty memory's error")
    ax.set(xlabel="number of stored pairs n", ylabel="mean recall error ||M_n k_i - v_i||",
           title="Correcting memories recall better; the implicit step never overshoots")


def plot_momentum(ax, data):
    lag = data["lag"]
    ax.bar(lag, data["weight"], color="C0", label=f"weight (1 - a) a^j of gradient j steps back (a = {data['alpha']:g})")
    ax2 = ax.twinx()
    ax2.plot(lag + 1, data["mass"], color="C1", label="share of the latest n gradients, 1 - a^n")
    for n, frac, paper in ((data["half"], "50%", data["paper_half"]), (data["most"], "99%", data["paper_most"])):
        ax2.axvline(n, color="C2", ls="--")
        ax2.annotate(f"{frac}: n = {n} (paper: {paper})", (n, 0.5 if frac == "50%" else 0.9),
                     xytext=(4, 0), textcoords="offset points", color="C2")
    ax2.set_ylabel("share of the total weight")
    ax2.set_ylim(0, 1.05)
    ax.set(xlabel="gradients back j (bars) / count n (line)", ylabel="weight",
           title=f"Momentum {data['alpha']:g}: half its weight in {data['half']} gradients, 99% in {data['most']} "
                 f"(paper: {data['paper_half']}, {data['paper_most']})")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower right", bbox_to_anchor=(1.0, 0.12))


def plot_stability(ax, data):
    x = data["eta_k2"]
    ax.loglog(x, np.maximum(data["explicit"], 1e-17), label="explicit step (delta rule): |1 - eta ||k||^2|")
    ax.loglog(x, data["implicit"], label="implicit step (Longhorn): 1 / (1 + eta ||k||^2)")
    ax.axhline(1.0, color="gray", ls="--", lw=0.8, label="factor 1 (no contraction)")
    ax.axvline(2.0, color="C3", ls=":", label="eta ||k||^2 = 2: explicit diverges beyond")
    ax.set_ylim(1e-3, 2e2)
    ax.set(xlabel="eta ||k||^2", ylabel="||M_{t+1} k - v|| / ||M_t k - v||",
           title="The implicit step contracts for every step size; the explicit one diverges past 2")


def plot_cms(ax, data):
    upd = data["updates"]
    K = upd.shape[0]
    for i in range(K):
        t = data["steps"][upd[i]]
        ax.scatter(t, np.full(t.size, i), marker="s", s=40, label=f"block {i + 1}: C = {data['chunk_sizes'][i]}")
    ax.set_yticks(range(K), [f"C = {c}" for c in data["chunk_sizes"]])
    ax.set_ylim(K - 0.5, -0.5)
    ax.set(xlabel="step t", ylabel="block (chunk size)",
           title="CMS: block l updates only at steps t = 0 mod C_l (measured from the scan)")


def plot_newton_schulz(ax, data):
    s = data["steps"]
    ax.semilogy(s, np.maximum(data["cubic"], 1e-17), marker="o", ms=3, label="cubic Newton-Schulz (converges)")
    ax.semilogy(s, data["quintic"], marker="s", ms=3, label="Muon's quintic (no fixed point at 1)")
    ax.axvline(5, color="gray", ls=":", label="Muon's 5 steps")
    ax.set(xlabel="Newton-Schulz steps", ylabel="||X_s - U V^T||_2",
           title=f"Cubic Newton-Schulz reaches the polar factor; the quintic stops short (kappa = {data['condition']:g})")


def plot_throughput(ax, data):
    T = data["seq_len"]
    ax.loglog(T, data["recurrent"], marker="o", label="recurrent (one token at a time)")
    ax.loglog(T, data["chunked"], marker="s", label=f"chunked (C = {data['chunk']})")
    ax.set(xlabel="sequence length T", ylabel="head-tokens / s (this machine, best of 3)",
           title=f"Delta rule, chunked vs recurrent throughput (H = {data['heads']}, d = {data['d']}; "
                 f"outputs agree to {np.max(data['max_diff']):.0e})")


# name -> (data function, drawing function): one PNG each, in the tour's order
FIGURES = {
    "recall_vs_pairs": (figures.recall_vs_pairs, plot_recall),
    "momentum_weights": (figures.momentum_weights, plot_momentum),
    "delta_step_stability": (figures.delta_step_stability, plot_stability),
    "cms_timeline": (figures.cms_timeline, plot_cms),
    "newton_schulz": (figures.newton_schulz_convergence, plot_newton_schulz),
    "chunked_vs_recurrent": (figures.chunked_vs_recurrent_throughput, plot_throughput),
}


def write_figures(out_dir: str, names=None) -> list[str]:
    """Write ``out_dir/<name>.png`` for every figure (or those named); return the paths.

    Raises
    ------
    PlotExtraMissing
        matplotlib is not installed (the message names the ``plot`` extra).
    ValueError
        An unknown figure name.
    """
    plt = _pyplot()
    names = list(FIGURES) if names is None else list(names)
    for n in names:
        if n not in FIGURES:
            raise ValueError(f"names: no figure {n!r}; known: {', '.join(FIGURES)}")
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for n in names:
        data_fn, draw = FIGURES[n]
        fig, ax = _figure(plt)
        draw(ax, data_fn())
        if ax.get_legend() is None:
            ax.legend(loc="best")
        ax.title.set_fontsize(10)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{n}.png")
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
        paths.append(path)
    return paths
