"""``gfa fanin``: gradient fan-in of a residual layout, exact and symbolic.

Layout sources (exactly one): ``--branches N`` (a sequential stack), ``--layout FILE.json``,
``--model NAME`` (a real module, checked by autograd on its own wiring) or ``--symbolic`` (the
closed forms in ``N`` and ``i``). A new source adds one argument in :func:`add_source_arguments`
and one case in :func:`layout_from_args`.

Everything that needs torch (models, the autograd checks, memory estimates) is imported inside
the function that uses it: ``gfa fanin --branches N`` starts without loading torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import sympy as sp
from tabulate import tabulate

from gfa_theory.cli import COMMANDS
from gfa_theory.cli.formats import FORMATS, render_rows
from gfa_theory.errors import ConfigError
from gfa_theory.theory import symbolic
from gfa_theory.theory.layout import Layout

TABLE_ORDERS = 4  # path orders k = 0..3 shown in table and LaTeX output
SYMBOLIC_CHECK_N = range(1, 17)  # sequential stacks on which --symbolic --check runs autograd
# Every order of every branch is ~P^2/2 integers of up to P bits: beyond this many stream
# positions the JSON would run to gigabytes, so --max-order is required.
FULL_ORDER_LIMIT = 2048
# Hostile sizes, refused before any work: the exact analysis takes ~3 s and 0.3 GB at this many
# stream positions (the symbolic closed forms cover any N); path counts at most this many
# (positions x orders); the autograd check takes ~10 s and 1 GB at this many positions.
MAX_POSITIONS = 100_000
MAX_COUNTS = FULL_ORDER_LIMIT ** 2
MAX_CHECK_POSITIONS = 20_000
MAX_MODEL_BLOCKS = 100_000


def add_source_arguments(source: argparse._MutuallyExclusiveGroup) -> None:
    """Where the layout comes from; ``source`` is a required mutually exclusive group."""
    source.add_argument("--branches", type=int, metavar="N",
                        help="a sequential stack of N single-branch blocks")
    source.add_argument("--layout", metavar="FILE.json",
                        help='a layout file: {"blocks": [{"branches": 2, "parallel": false}, ...], '
                             '"supervision": [block indices], "shared": [[block indices], ...]}')
    source.add_argument("--symbolic", action="store_true",
                        help="closed forms in N and i for a sequential stack")
    source.add_argument("--model", metavar="NAME",
                        help="a real module: gpt, resnet, torchvision:resnet18 (any torchvision "
                             "ResNet), hf:gpt2, hf:llama, hf:qwen2, hf:qwen3, hf:mistral, hf:gemma2, hf:gemma3, "
                             "hf:phi3 or hf:olmo2; its layout's fan-in is checked against autograd "
                             "path counts on the module itself (exit 1 on disagreement), and every "
                             "branch and block is named by its module path")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "fanin", help=COMMANDS["fanin"],
        description="Exact gradient fan-in F(i) and path counts by order of every branch, "
                    "block and shared parameter group; or the symbolic closed forms.")
    source = p.add_mutually_exclusive_group(required=True)
    add_source_arguments(source)
    p.add_argument("--supervision", choices=("final", "all"), default=None,
                   help="heads on the last branch only (default) or on every branch "
                        "(with --branches or --symbolic; a layout file has its own)")
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                   help="model config override for --model (repeatable), e.g. n_blocks=6, "
                        "supervision=all, n_layer=4")
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="a text table, JSON (everything), the branch table as CSV, or LaTeX")
    p.add_argument("--max-order", type=int, default=None, metavar="K",
                   help="report path counts of orders 0..K only (default: every order in JSON, "
                        f"orders 0..{TABLE_ORDERS - 1} in table and LaTeX)")
    p.add_argument("--check", action="store_true",
                   help="also count the paths by autograd on scalar-gain surrogates and "
                        "report agreement (exit 1 on disagreement)")
    p.set_defaults(func=run)
    return p


def layout_from_args(args: argparse.Namespace) -> Layout:
    """The :class:`Layout` the arguments describe (``--branches``, ``--layout`` or ``--model``)."""
    if getattr(args, "overrides", None) and getattr(args, "model", None) is None:
        raise ConfigError("--set applies to --model only")
    if getattr(args, "model", None) is not None:
        if args.supervision is not None:
            raise ConfigError("--supervision applies to --branches and --symbolic; "
                              "set a model's heads with --set supervision=all")
        from gfa_theory.models.families import module_layout  # noqa: PLC0415  (start-up: torch)

        return module_layout(model_from_args(args))
    if getattr(args, "branches", None) is not None:
        if isinstance(args.branches, int) and args.branches > MAX_POSITIONS:
            raise ConfigError(f"--branches must be at most {MAX_POSITIONS:,}, got {args.branches} "
                              "(--symbolic gives the closed forms for any N)")
        return Layout.sequential(args.branches, args.supervision or "final")
    if getattr(args, "layout", None) is not None:
        if args.supervision is not None:
            raise ConfigError("--supervision applies to --branches and --symbolic; "
                              "a layout file carries its own 'supervision' list")
        return Layout.from_file(args.layout)
    raise ConfigError("no layout given: use --branches N or --layout FILE.json")


def model_from_args(args: argparse.Namespace):
    """The ``nn.Module`` named by ``--model`` and ``--set`` (built once per ``args``; refused
    before anything is allocated when it cannot fit in memory)."""
    if getattr(args, "_module", None) is None:
        from gfa_theory.models.families import parse_model_spec  # noqa: PLC0415  (start-up: torch)

        check_model_size(args.model, args.overrides)
        args._module = parse_model_spec(args.model, args.overrides)
    return args._module


def _model_params(spec: str, overrides: list[str] | None) -> int | None:
    """Parameters of the model ``spec`` would build, without building it (``None``: unknown)."""
    # start-up: each of these imports torch
    from gfa_theory.config import parse_overrides  # noqa: PLC0415
    from gfa_theory.models import build_config  # noqa: PLC0415
    from gfa_theory.models.families import HF_FAMILIES, HF_GPT2_DEFAULTS  # noqa: PLC0415
    from gfa_theory.train.memory import param_count  # noqa: PLC0415

    if spec in ("gpt", "resnet"):
        return param_count(spec, build_config(spec, overrides))
    family, _, name = spec.partition(":")
    if family == "hf" and name in HF_FAMILIES and name != "gpt2":
        return _llama_params({**HF_FAMILIES[name][2], **parse_overrides(overrides)})
    if family == "hf" and name == "gpt2":
        kw = {**HF_GPT2_DEFAULTS, **parse_overrides(overrides)}
        sizes = [kw.get(k) for k in ("n_layer", "n_embd", "vocab_size", "n_positions")]
        inner = kw.get("n_inner") or 4 * (kw.get("n_embd") or 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in [*sizes, inner]):
            return None  # GPT2Config refuses it with its own message
        L, C, V, T = sizes
        if L > MAX_MODEL_BLOCKS:
            raise ConfigError(f"n_layer must be at most {MAX_MODEL_BLOCKS:,}, got {L}")
        return V * C + T * C + 2 * C + L * (4 * C + 3 * C * C + 3 * C + C * C + C + 2 * C * inner + inner + C)
    if family == "torchvision":  # a fixed depth: built on the meta device, nothing is allocated
        import torch  # noqa: PLC0415
        import torchvision  # noqa: PLC0415

        try:
            with torch.device("meta"):
                model = torchvision.models.get_model(name, weights=None, **parse_overrides(overrides))
        except Exception:  # noqa: BLE001  (parse_model_spec reports it properly)
            return None
        return sum(p.numel() for p in model.parameters())
    return None


def _llama_params(kw: dict) -> int | None:
    """Parameters of a Llama-like config (untied head, four norms a layer: an upper bound for
    every decoder family), without building it."""
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size", "num_attention_heads")
    sizes = [kw.get(k) for k in keys]
    kv = kw.get("num_key_value_heads") or kw.get("num_attention_heads")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in [*sizes, kv]):
        return None  # LlamaConfig refuses it with its own message
    L, C, inner, V, heads = sizes
    if L > MAX_MODEL_BLOCKS:
        raise ConfigError(f"num_hidden_layers must be at most {MAX_MODEL_BLOCKS:,}, got {L}")
    head_dim = kw.get("head_dim") if isinstance(kw.get("head_dim"), int) else C // heads
    q_width, kv_width = heads * head_dim, kv * head_dim
    return 2 * V * C + C + L * (2 * C * q_width + 2 * C * kv_width + 3 * C * inner + 4 * C + 2 * head_dim)


def check_model_size(spec: str, overrides: list[str] | None) -> None:
    """Refuse (one line) a ``--model`` whose copies for the autograd check exceed the memory."""
    from gfa_theory.train.memory import BASE_BYTES, FLOAT_BYTES, check_fits  # noqa: PLC0415  (start-up)

    params = _model_params(spec, overrides)
    if params is not None:  # the module, its scalar-gain copy and the autograd graph
        check_fits(3 * params * FLOAT_BYTES + BASE_BYTES, f"building {spec} and checking it",
                   f" ({params:,} parameters)")


def run(args: argparse.Namespace) -> int:
    if args.max_order is not None and args.max_order < 0:
        raise ConfigError(f"--max-order must be >= 0, got {args.max_order}")
    if args.symbolic:
        if args.max_order is not None:
            raise ConfigError("--max-order applies to --branches and --layout, not --symbolic")
        if getattr(args, "overrides", None):
            raise ConfigError("--set applies to --model only")
        return _run_symbolic(args)
    layout = layout_from_args(args)
    max_order = _checked_max_order(args, layout)
    result = symbolic.analyze(layout, max_order=max_order)
    names = None
    if getattr(args, "model", None) is not None:  # a real module: always count on its wiring
        from gfa_theory.models.families import module_fan_in  # noqa: PLC0415  (start-up: torch)

        counted = module_fan_in(model_from_args(args))
        check = module_check(model_from_args(args), result, counted)
        names = {"branches": [r["name"] for r in counted["branches"]],
                 "blocks": [r["name"] for r in counted["blocks"]], "wiring": counted["wiring"]}
    else:
        check = autograd_check(layout, result) if args.check else None
    print(_render(args, layout, result, check, names))
    return _check_status(check)


def _checked_max_order(args: argparse.Namespace, layout: Layout) -> int | None:
    """The path orders to report, once the sizes the arguments ask for are known to be sane."""
    positions = layout.n_positions
    if positions > MAX_POSITIONS:
        raise ConfigError(f"the layout writes {positions:,} stream positions: at most {MAX_POSITIONS:,}")
    if layout.N > MAX_POSITIONS:  # a parallel block writes one position with any number of branches
        raise ConfigError(f"the layout has {layout.N:,} branches: at most {MAX_POSITIONS:,}")
    max_order = args.max_order
    if args.format != "json" and max_order is not None and max_order >= TABLE_ORDERS:
        raise ConfigError(f"--max-order {max_order} and --format {args.format} conflict: its table shows orders "
                          f"0..{TABLE_ORDERS - 1} (every order: --format json)")
    if args.format != "json":
        max_order = TABLE_ORDERS - 1 if max_order is None else min(max_order, TABLE_ORDERS - 1)
    elif max_order is None and positions > FULL_ORDER_LIMIT:
        raise ConfigError(f"the layout writes {positions} stream positions: every path order would "
                          f"be ~{positions ** 2 // 2} integers; pass --max-order K")
    counts = positions * (min(positions - 1, max_order if max_order is not None else positions) + 1)
    if counts > MAX_COUNTS:
        raise ConfigError(f"--max-order {max_order} over {positions:,} stream positions is ~{counts:,} path "
                          f"counts, more than {MAX_COUNTS:,}: pass a smaller --max-order")
    if (args.check or getattr(args, "model", None) is not None) and positions > MAX_CHECK_POSITIONS:
        raise ConfigError(f"the autograd check of {positions:,} stream positions would take minutes and "
                          f"gigabytes: at most {MAX_CHECK_POSITIONS:,}")
    return max_order


def _branch_rows(result: symbolic.FanInResult, names: dict | None) -> list[dict[str, Any]]:
    """One row per branch: index, block, slot, module name (of a --model), F(i), path counts."""
    shown = TABLE_ORDERS if result.max_order is None else min(TABLE_ORDERS, result.max_order + 1)
    rows = []
    for k, (br, nf) in enumerate(zip(result.branches, result.fan_in_normalized)):
        row: dict[str, Any] = {"i": br.index, "block": br.block, "slot": br.slot}
        if names is not None:
            row["unit"] = names["branches"][k]
        row |= {"F": br.fan_in, "F_norm": round(nf, 6)}
        row |= {f"k={o}": br.paths_by_order[o] if o < len(br.paths_by_order) else 0 for o in range(shown)}
        rows.append(row)
    return rows


def _render(args: argparse.Namespace, layout: Layout, result: symbolic.FanInResult,
            check: dict[str, Any] | None, names: dict | None = None) -> str:
    """``result`` (and the check) as JSON, CSV, LaTeX or a text table; ``names``: the module
    name of every branch and block of a ``--model``."""
    if args.format == "json":
        out = result.to_dict()
        if names is not None:
            for key in ("branches", "blocks"):
                for row, name in zip(out[key], names[key]):
                    row["name"] = name
            out["wiring"] = names["wiring"]
        if check is not None:
            out["check"] = check
        return json.dumps(out)
    if args.format == "csv":
        return render_rows(_branch_rows(result, names), "csv")
    lines = []
    if args.format == "latex":
        if args.branches is not None:
            expr = symbolic.fan_in_closed_form(args.supervision or "final")
            lines.append(rf"\[ {symbolic.latex(expr, 'F(i)')}, \quad N = {layout.N} \]")
        lines.append(symbolic.latex_table(result, orders=TABLE_ORDERS))
        if check is not None:
            lines.append(f"% {_check_line(check)}")
        return "\n".join(lines)
    lines.append(_table(result, closed_form=args.supervision or "final" if args.branches is not None else None,
                        names=names))
    if names is not None and names.get("wiring"):  # norms are the identity for path counts, named here
        lines.append(f"residual wiring, each layer: {names['wiring']}")
    if check is not None:
        lines.append(_check_line(check))
    return "\n".join(lines)


# ---- autograd check ----------------------------------------------------------------------------
def autograd_check(layout: Layout, result: symbolic.FanInResult) -> dict[str, Any]:
    """Compare ``result`` with autograd counts on the scalar-gain surrogate of ``layout``.

    Counts below 2**53 must match exactly, larger ones to a relative 1e-9 (float64 rounding);
    counts beyond the float64 range are skipped and reported.
    """
    from gfa_theory.theory import path_counts  # noqa: PLC0415  (start-up: torch, only for a check)

    K = result.max_order if result.max_order is not None else max(layout.n_positions - 1, 1)
    counted = path_counts.count_paths(layout, max_order=K)
    pairs = []
    for br, series in zip(result.branches, counted.paths_by_order):
        pairs.append((br.fan_in, series[0] + series[1]))
        pairs += [(c, series[k]) for k, c in enumerate(br.paths_by_order)]
    for g, series in zip(result.groups, counted.group_paths_by_order):
        pairs.append((g.fan_in, series[0] + series[1]))
        pairs += [(c, series[k]) for k, c in enumerate(g.paths_by_order)]
    return _agreement(pairs, method="count_paths: one backward through a formal-series surrogate")


def module_check(model, result: symbolic.FanInResult, counted: dict | None = None) -> dict[str, Any]:
    """Compare ``result`` (the model's layout) with autograd counts on the real module, its
    branches swapped for scalar gains (:func:`gfa_theory.models.families.module_fan_in`;
    ``counted``: its result when already computed)."""
    from gfa_theory.models.families import module_fan_in  # noqa: PLC0415  (start-up: torch)

    counted = module_fan_in(model) if counted is None else counted
    pairs = []
    for br, row in zip(result.branches, counted["branches"]):
        pairs.append((br.fan_in, row["fan_in"]))
        pairs += [(c, row["paths_by_order"][k]) for k, c in enumerate(br.paths_by_order[:2])]
    for g, row in zip(result.groups, counted["groups"]):
        pairs += [(g.fan_in, row["fan_in"])] + list(zip(g.fan_in_by_slot, row["fan_in_by_slot"]))
    return _agreement(pairs, method=f"module_fan_in: autograd on the {counted['model']} module "
                                    "with scalar-gain branches")


def _agreement(pairs: list[tuple[int, float]], method: str) -> dict[str, Any]:
    from gfa_theory.theory import path_counts  # noqa: PLC0415  (start-up: torch)

    compared = [(e, a) for e, a in pairs if e < path_counts.FLOAT64_MAX]
    mismatches = sum(not path_counts.counts_agree(e, a) for e, a in compared)
    max_rel = max((abs(a - e) / e for e, a in compared if e), default=0.0)
    return {"agree": mismatches == 0, "method": method, "compared": len(compared),
            "skipped_beyond_float64": len(pairs) - len(compared), "mismatches": mismatches,
            "max_relative_difference": max_rel,
            "exact": all(e < path_counts.EXACT_LIMIT for e, _ in compared)}


def _check_line(check: dict[str, Any]) -> str:
    verdict = "agrees" if check["agree"] else f"DISAGREES ({check['mismatches']} mismatches)"
    line = (f"autograd check: {verdict} on {check['compared']} counts "
            f"(max relative difference {check['max_relative_difference']:.2g}"
            f"{', all exact' if check['exact'] else ''})")
    if check["skipped_beyond_float64"]:
        line += f"; {check['skipped_beyond_float64']} counts beyond float64 not compared"
    return line


def _check_status(check: dict[str, Any] | None) -> int:
    if check is None or check["agree"]:
        return 0
    print(f"gfa: autograd check failed: {_check_line(check)}", file=sys.stderr)
    return 1


# ---- symbolic ----------------------------------------------------------------------------------
def _run_symbolic(args: argparse.Namespace) -> int:
    supervision = args.supervision or "final"
    forms = symbolic.closed_forms(supervision)
    attn_mlp = symbolic.block_stack_closed_form(2, False, supervision)
    check = _symbolic_check(supervision) if args.check else None
    render = {"json": _symbolic_json, "latex": _symbolic_latex, "csv": _symbolic_csv}.get(args.format, _symbolic_text)
    print(render(supervision, forms, attn_mlp, check))
    return _check_status(check)


def _symbolic_json(supervision: str, forms: dict, attn_mlp: tuple, check: dict | None) -> str:
    out: dict[str, Any] = {
        "supervision": supervision,
        "variables": {"N": "number of branches", "i": "branch index (1-based)",
                      "t": "path-order variable", "r": "applications of a shared last block",
                      "B": "number of blocks", "b": "block index", "s": "slot in the block"},
        # plain strings read back with sympy.parse_expr(text, local_dict=symbols), since a bare
        # sympify maps "N" to sympy's numeric-evaluation function; "srepr" round-trips as is
        "parse": "sympy.parse_expr(text, local_dict={name: sympy.Symbol(name) "
                 "for name in variables})",
        **{key: str(expr) for key, expr in forms.items()},
        "transformer_branch_fan_in": str(attn_mlp[0]),
        "transformer_block_fan_in": str(attn_mlp[1]),
        "srepr": {key: sp.srepr(expr) for key, expr in forms.items()},
        "latex": {key: symbolic.latex(expr, symbolic.CLOSED_FORM_LHS[key])
                  for key, expr in forms.items()},
    }
    if check is not None:
        out["check"] = check
    return json.dumps(out)


def _symbolic_csv(supervision: str, forms: dict, attn_mlp: tuple, check: dict | None) -> str:
    rows = [{"quantity": symbolic.CLOSED_FORM_LHS[key], "expression": str(expr), "supervision": supervision}
            for key, expr in forms.items()]
    rows += [{"quantity": lhs, "expression": str(expr), "supervision": supervision}
             for lhs, expr in zip(("F(b, s)", "F(b)"), attn_mlp)]
    return render_rows(rows, "csv")


def _symbolic_latex(supervision: str, forms: dict, attn_mlp: tuple, check: dict | None) -> str:
    lines = [rf"\[ {symbolic.latex(expr, symbolic.CLOSED_FORM_LHS[key])} \]" for key, expr in forms.items()]
    lines.append(rf"\[ {symbolic.latex(attn_mlp[1], 'F(b)')} \]")
    if check is not None:
        lines.append(f"% {_check_line(check)}")
    return "\n".join(lines)


def _symbolic_text(supervision: str, forms: dict, attn_mlp: tuple, check: dict | None) -> str:
    heads = "S = {N}" if supervision == "final" else "S = {1..N}"
    lines = [f"sequential stack of N branches, heads {heads}"]
    lines += [f"  {symbolic.CLOSED_FORM_LHS[key]:8s} = {expr}" for key, expr in forms.items()]
    lines.append(f"Transformer blocks (attention slot s=0, MLP s=1), heads on "
                 f"{'the last block' if supervision == 'final' else 'every block'}:")
    lines.append(f"  F(b, s)  = {attn_mlp[0]}\n  F(b)     = {attn_mlp[1]}")
    if check is not None:
        lines.append(_check_line(check))
    return "\n".join(lines)


def _symbolic_check(supervision: str) -> dict[str, Any]:
    """The closed forms against autograd path counts on sequential stacks ``N = 1..16``."""
    from gfa_theory.theory import path_counts  # noqa: PLC0415  (start-up: torch)

    G = symbolic.generating_function_closed_form(supervision)
    pairs = []
    for n_value in SYMBOLIC_CHECK_N:
        layout = Layout.sequential(n_value, supervision)
        counted = path_counts.count_paths(layout)
        profile = symbolic.closed_form_profile(n_value, supervision)
        for i_value, (F, series) in enumerate(zip(profile, counted.paths_by_order), start=1):
            pairs.append((F, series[0] + series[1]))
            poly = sp.Poly(sp.cancel(G.subs({symbolic.N: n_value, symbolic.i: i_value})),
                           symbolic.t)
            coeffs = [int(c) for c in reversed(poly.all_coeffs())]
            pairs += [(c, series[k]) for k, c in enumerate(coeffs)]
    return _agreement(pairs, method=f"closed forms vs count_paths, N = 1..{SYMBOLIC_CHECK_N[-1]}")


# ---- table -------------------------------------------------------------------------------------
def _table(result: symbolic.FanInResult, closed_form: str | None = None, names: dict | None = None) -> str:
    layout = result.layout
    shown = TABLE_ORDERS if result.max_order is None else min(TABLE_ORDERS, result.max_order + 1)
    lines = [f"N = {layout.N} branches, B = {layout.B} blocks, heads on blocks "
             f"S = {{{', '.join(map(str, layout.supervision))}}}"]
    if closed_form is not None:
        lines.append(f"closed form: F(i) = {symbolic.fan_in_closed_form(closed_form)}")
    unit = ["unit"] if names is not None else []
    header = ["i", "block", "slot", *unit, "F(i)", "F/max"] + [f"k={k}" for k in range(shown)]
    rows = [[str(br.index), str(br.block), str(br.slot)] + ([names["branches"][n]] if names else [])
            + [str(br.fan_in), f"{nf:.3f}"]
            + [str(br.paths_by_order[k]) if k < len(br.paths_by_order) else "0"
               for k in range(shown)]
            for n, (br, nf) in enumerate(zip(result.branches, result.fan_in_normalized))]
    lines += _aligned(header, rows)
    lines += [f"  {line}" for line in _legend(shown)]
    lines.append("")
    lines += _aligned(["block", *unit, "branches", "F(b)"],
                      [[str(bl.block)] + ([names["blocks"][n]] if names else [])
                       + [",".join(map(str, bl.branches)), str(bl.fan_in)]
                       for n, bl in enumerate(result.blocks)])
    shared = [g for g in result.groups if g.shared]
    if shared:
        lines.append("")
        lines += _aligned(["shared blocks", "F(P)", "F(P) by slot"],
                          [[",".join(map(str, g.blocks)), str(g.fan_in),
                            ",".join(map(str, g.fan_in_by_slot))] for g in shared])
    return "\n".join(lines)


def _legend(shown: int) -> list[str]:
    """What the columns of the branch table count (printed under it)."""
    return ["i: branch (forward order); slot: its place in its block; F(i): fan-in, the gradient paths reaching",
            "branch i from the loss heads through at most one later branch; F/max: F(i) / the largest F(i);",
            f"k=0..{shown - 1}: paths through exactly k later branches (k=0: identity paths, one per head at or after "
            "the branch),",
            "so F(i) = (k=0) + (k=1); F(b) below: a block's fan-in, the sum of its branches' F(i)"]


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    """Right-aligned columns under ``header`` (the cells are already formatted)."""
    return tabulate(rows, headers=header, tablefmt="plain", disable_numparse=True, stralign="right").splitlines()
