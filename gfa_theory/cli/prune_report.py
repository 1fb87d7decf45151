"""What a practitioner reads after ``gfa prune HF_DIR``: ``report.md`` and ``scores.png`` beside
the pruned checkpoint, and the comparison table of several methods on the terminal.

Everything here renders the numbers of the prune's report (``evaluation.json``'s dict): the
ranking and its scores, which layers went and by which rule, parameters and held-out loss and
perplexity before and after, and one plot of each method's per-layer score against depth with
the removed layers marked. A ranking that is plain depth order (deepest first) is said so: it
removes what ``--method last`` removes, whatever its scores mean.
"""
from __future__ import annotations

import io
from pathlib import Path

from tabulate import tabulate

from gfa_theory.train.store import write_bytes_atomic, write_text_atomic

REPORT_FILE, PLOT_FILE = "report.md", "scores.png"
# what each method's score of a layer is (higher = more important)
SCORE_MEANING = {
    "cascadeflow": "the layer's accumulated training gradient ({quantity}) from the tracker log",
    "bi": "Block Influence, 1 - mean cos(layer input, layer output) on calibration text (ShortGPT)",
    "angular": "the angular distance between the layer's input and output on calibration text; the "
               "contiguous k-layer span with the smallest distance goes first (Gromov et al.)",
    "taylor": "|sum theta * dL/dtheta| over the layer's weights on calibration text",
    "magnitude": "the mean |theta| of the layer's weights",
    "random": "seeded uniform draws (a control: no signal)",
    "last": "depth alone: a later layer scores lower",
    "ablation": "the calibration-loss increase when the layer goes (greedy, SLEB-style)",
}


def _meaning(method: str, report: dict) -> str:
    return SCORE_MEANING[method].format(quantity=report.get("quantity") or "A")


def depth_note(row: dict) -> str | None:
    """The sentence saying a ranking is depth order, or removes the last layers; else ``None``."""
    if row["method"] == "last":
        return None
    if row["ranking_is_depth_order"]:
        return (f"{row['method']}'s ranking is plain depth order (deepest first): it removes the same "
                "layers as --method last")
    if row["removes_the_last_layers"] and row["removed"]:
        n = len(row["removed"])
        return f"{row['method']} removes the last {f'{n} layers' if n > 1 else 'layer'}, as --method last does"
    return None


def scaled_scores(report: dict) -> dict[str, list[float]]:
    """Each method's scores in depth order, scaled to [0, 1] (methods score on different scales)."""
    out = {}
    for row in report["comparison"]:
        raw = [row["ranking"]["scores"][name] for name in report["layers"]]
        low, high = min(raw), max(raw)
        out[row["method"]] = [(v - low) / (high - low) if high > low else 0.5 for v in raw]
    return out


def plot_scores(report: dict, scaled: dict[str, list[float]], ax=None):
    """Per-layer score (scaled) against depth, one line per method, removed layers circled."""
    if ax is None:
        from matplotlib.figure import Figure  # noqa: PLC0415  (start-up: only when a report is drawn)

        ax = Figure(figsize=(6.4, 3.6), layout="constrained").subplots()
    depth = list(range(len(report["layers"])))
    for j, row in enumerate(report["comparison"]):
        ys = scaled[row["method"]]
        (line,) = ax.plot(depth, ys, marker="o", markersize=4, label=row["method"])
        gone = [report["layers"].index(n) for n in row["removed"]]
        ax.scatter(gone, [ys[k] for k in gone], s=120 + 90 * j, facecolors="none",  # nested rings: all visible
                   edgecolors=line.get_color(), linewidths=1.5)
    ax.set_xlabel("layer (depth)")
    ax.set_ylabel("score, scaled to [0, 1] per method")
    ax.set_title(f"{report['source_run']}: removed layers circled (k = {report['k']})", fontsize=10)
    ax.set_xticks(depth)
    ax.legend(fontsize=8)
    return ax


def _eval_cells(ev: dict | None) -> list[str]:
    return ["-"] * 3 if ev is None else [f"{ev['loss']:.4f}", f"{ev['perplexity']:.3f}", f"{ev['accuracy']:.4f}"]


def comparison_rows(report: dict) -> list[list[str]]:
    rows = []
    for row in report["comparison"]:
        after, healed = row["after"], row["after_heal"]
        rows.append([row["method"], ", ".join(n.rsplit(".", 1)[1] for n in row["removed"]) or "none",
                     f"{row['params']:,}", f"{after['perplexity']:.3f}" if after else "-",
                     f"{healed['perplexity']:.3f}" if healed else "-",
                     "yes" if row["ranking_is_depth_order"] else "no"])
    return rows


COMPARISON_HEADERS = ["method", "layers removed", "params", "ppl after", "ppl after heal", "depth order"]


def comparison_text(report: dict) -> str:
    """The methods side by side, for the terminal."""
    before = report["before"]
    lines = [f"methods compared (k = {report['k']}; {report['method']} is the one written)"
             + (f"; ppl before {before['perplexity']:.3f}" if before else "")]
    lines.append(tabulate(comparison_rows(report), headers=COMPARISON_HEADERS, tablefmt="plain",
                          disable_numparse=True))
    lines += [n for n in (depth_note(r) for r in report["comparison"]) if n]
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    """``report.md``: the prune in one screen."""
    k, layers = report["k"], report["layers"]
    top = report["comparison"][0]
    lines = ["# gfa prune report", "",
             f"`{report['source_run']}` ({report['model_name']}): {len(layers)} layers -> {len(layers) - k}, "
             "the pruned model is beside this file.", "", "## Layers removed", ""]
    removed = ", ".join(f"`{n}`" for n in report["removed"]) or "none"
    lines.append(f"{removed}: the {k} lowest scores by **{report['method']}**, whose score of a layer is "
                 f"{_meaning(report['method'], report)} (higher = more important).")
    note = depth_note(top)
    if note:
        lines += ["", note[0].upper() + note[1:] + "."]
    lines += ["", "## Ranking, least important first", ""]
    scores = report["ranking"]["scores"]
    lines.append(tabulate([[r, n, layers.index(n), f"{scores[n]:.6g}", "yes" if n in report["removed"] else ""]
                           for r, n in enumerate(report["ranking"]["order"])],
                          headers=["rank", "layer", "depth", "score", "removed"], tablefmt="github",
                          disable_numparse=True))
    lines += ["", "## Before and after", ""]
    p = report["params"]
    evals = [("before", f"{p['before']:,}", report["before"]), ("after", f"{p['after']:,}", report["after"])]
    if report["after_heal"]:
        evals.append((f"after {report['heal']['steps']} healing steps", f"{p['after']:,}", report["after_heal"]))
    lines.append(tabulate([[label, params, *_eval_cells(ev)] for label, params, ev in evals],
                          headers=["", "parameters", "loss", "perplexity", "accuracy"], tablefmt="github",
                          disable_numparse=True))
    lines.append("")
    if report["before"] is None:
        lines.append("No perplexity: the directory has no tokenizer to read the evaluation text with.")
    else:
        t, h = report["text"], report["held_out"]
        lines.append(f"Evaluated on {t['source']}: {h['batches']} fixed batches ({h['count']:,} tokens predicted) "
                     f"of {t['seq_len']}-token windows from the held-out {t['held_out_tokens']:,} tokens; "
                     f"scoring and healing read only the first {t['train_tokens']:,}.")
    if len(report["comparison"]) > 1:
        lines += ["", "## Methods compared", "",
                  tabulate(comparison_rows(report), headers=COMPARISON_HEADERS, tablefmt="github",
                           disable_numparse=True), ""]
        lines += [f"- {r['method']}: {_meaning(r['method'], report)}." for r in report["comparison"]]
        notes = [n for n in (depth_note(r) for r in report["comparison"]) if n]
        lines += [""] + [f"{n[0].upper()}{n[1:]}." for n in notes] if notes else []
    lines += ["", f"![per-layer score against depth, removed layers circled]({PLOT_FILE})", ""]
    return "\n".join(lines)


def write_report(out: str | Path, report: dict) -> None:
    """``report.md`` and ``scores.png`` into ``out`` (each written atomically)."""
    out = Path(out)
    ax = plot_scores(report, scaled_scores(report))
    png = io.BytesIO()
    ax.figure.savefig(png, dpi=120, format="png", metadata={"Software": None})  # no version stamp
    write_bytes_atomic(out / PLOT_FILE, png.getvalue())
    write_text_atomic(out / REPORT_FILE, render_markdown(report))
