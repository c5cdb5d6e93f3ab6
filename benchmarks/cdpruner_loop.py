"""CDPruner at the LLM input, as tpc compiles it: unrolled steps (one graph per span length) or an ONNX Loop.

    python benchmarks/cdpruner_loop.py            # print one JSON line per setting
    python benchmarks/cdpruner_loop.py --write    # also write the BENCHMARKS.md section

Both graphs are the product's ``select_input`` selectors (``tpc.compiler.input_stage``):
``export_input_selectors`` for a plan with one span length (``InputSelect``: the greedy MAP
unrolled for ``keep`` steps) and ``export_any_length_selector`` for a plan with
``any_length`` (``DynamicInputSelect``: the greedy as an ONNX Loop counted by the length of
``keep_rows``, ``tpc.compiler.greedy_loop``). Per width (the decoder's hidden size) and
keep: one image span of --tokens rows inside a prompt of --text-tokens real rows, batch 1,
the full ``select_input`` feeds as ``tpc.runtimes.input_select`` builds them. Both forms
must return the same kept indices and outputs (checked); each is timed in ONNX Runtime CPU
in interleaved A/B rounds, medians of --repeats after a warm-up. DART's fixed-length
selector is timed at the same settings (the largest keep), one row per width.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from common import ROOT, write_section

from tpc.artifact_layout import input_select_name
from tpc.compiler.input_stage import export_input_selectors
from tpc.methods.llm_input import check_input_args, input_keep, parse_input_args

MARK = "<!-- cdpruner-loop -->"
MAX_CONTEXT = 4096  # the seq axis's upper bound in the exported graphs (the bench presets' context)
IMAGE_START = 5  # prompt rows before the image span (LLaVA's template puts a few there)


def fixed_plan(method: str, n: int, keep: int) -> dict:
    """``input_plan``'s entry for a single-crop family: one span length, its quota and graph."""
    params = parse_input_args(method, {})
    ratio = 1.0 - keep / n
    assert input_keep(n, ratio) == keep, (n, keep)
    check_input_args(method, params, n, keep)
    spans = {str(n): {"keep": keep, "graph": input_select_name(n, True)}}
    return {"method": method, "parameters": params, "ratio": ratio, "spans": spans}


def any_length_plan(method: str, n: int) -> dict:
    """``input_plan``'s entry for unpruned multi-crop pictures: one selector for spans of any length."""
    params = parse_input_args(method, {})
    any_length = {"graph": input_select_name(0, True), "max_image_tokens": n}
    return {"method": method, "parameters": params, "ratio": 0.0, "spans": {}, "any_length": any_length}


def export(plan: dict, width: int, out_dir: Path) -> tuple[Path, float]:
    """(graph path, export seconds) of the one selector ``plan`` names, exported as ``tpc compile`` does
    (``export_input_selectors`` hands an ``any_length`` plan to ``export_any_length_selector``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    paths = export_input_selectors(plan, width, MAX_CONTEXT, out_dir, dims=1)
    seconds = time.perf_counter() - start
    (path,) = paths.values()
    return path, seconds


def feeds(tokens: int, width: int, text_tokens: int, seed: int = 0) -> dict:
    """The fixed selector's feeds: one image span of ``tokens`` rows after IMAGE_START prompt rows."""
    total = tokens + text_tokens
    start = min(IMAGE_START, text_tokens)
    text_mask = np.ones((1, total), np.int64)
    text_mask[0, start : start + tokens] = 0
    return {
        "inputs_embeds": np.random.default_rng(seed).standard_normal((1, total, width)).astype(np.float32),
        "attention_mask": np.ones((1, total), np.int64),
        "position_ids": np.arange(total, dtype=np.int64)[None],
        "image_start": np.array([start], np.int64),
        "text_mask": text_mask,
    }


def nodes(path: Path) -> dict:
    """Top-level nodes and the nodes inside Loop bodies."""
    graph = onnx.load(str(path), load_external_data=False).graph
    body = sum(len(a.g.node) for n in graph.node if n.op_type == "Loop" for a in n.attribute if a.name == "body")
    return {"top": len(graph.node), "loop_body": body}


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def once(sess: ort.InferenceSession, feed: dict) -> tuple[float, list]:
    start = time.perf_counter()
    out = sess.run(None, feed)
    return (time.perf_counter() - start) * 1e3, out


def interleaved(runs: list[tuple[ort.InferenceSession, dict]], repeats: int) -> tuple[list[float], list[list]]:
    """Medians (ms) of ``repeats`` rounds, each running every (session, feeds) once; order alternates per round."""
    outs = [once(s, f)[1] for s, f in runs]  # warm-up
    samples: list[list[float]] = [[] for _ in runs]
    for r in range(repeats):
        order = range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))
        for i in order:
            ms, outs[i] = once(*runs[i])
            samples[i].append(ms)
    return [statistics.median(s) for s in samples], outs


def measure_width(args, width: int, keeps: list[int], tmp: Path) -> list[dict]:
    n = args.tokens
    common = {"tokens": n, "width": width, "text_tokens": args.text_tokens, "batch": 1}
    feed = feeds(n, width, args.text_tokens)
    loop_path, loop_s = export(any_length_plan("cdpruner", n), width, tmp / f"w{width}-loop")
    loop_sess, loop_nodes = session(loop_path), nodes(loop_path)
    rows = []
    for keep in keeps:
        path, unrolled_s = export(fixed_plan("cdpruner", n, keep), width, tmp / f"w{width}-k{keep}")
        loop_feed = {**feed, "image_rows": np.arange(n), "keep_rows": np.arange(keep)}
        (u_ms, l_ms), (u_out, l_out) = interleaved([(session(path), feed), (loop_sess, loop_feed)], args.repeats)
        same = len(u_out) == len(l_out) and all(np.array_equal(a, b) for a, b in zip(u_out, l_out, strict=True))
        rows.append(
            {
                "method": "cdpruner",
                **common,
                "keep": keep,
                "unrolled_ms": round(u_ms, 3),
                "loop_ms": round(l_ms, 3),
                "same_selection": bool(same),
                "nodes": {"unrolled": nodes(path), "loop": loop_nodes},
                "export_s": {"unrolled": round(unrolled_s, 2), "loop": round(loop_s, 2)},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    keep = max(keeps)
    path, dart_s = export(fixed_plan("dart", n, keep), width, tmp / f"w{width}-dart")
    (d_ms,), _ = interleaved([(session(path), feed)], args.repeats)
    rows.append(
        {
            "method": "dart",
            **common,
            "keep": keep,
            "ms": round(d_ms, 3),
            "nodes": nodes(path),
            "export_s": round(dart_s, 2),
        }
    )
    print(json.dumps(rows[-1]), flush=True)
    return rows


def write_cdpruner_section(path: Path, rows: list[dict], repeats: int) -> None:
    first = rows[0]
    cdp = [r for r in rows if r["method"] == "cdpruner"]
    dart = [r for r in rows if r["method"] == "dart"]
    lines = [
        "### CDPruner: unrolled steps or an ONNX Loop (LLM-input selectors)",
        "",
        f"`python benchmarks/cdpruner_loop.py --write` (part of `make bench`): tpc's own `select_input` graphs, "
        "exported by `tpc.compiler.input_stage`: the fixed-length selector (the greedy MAP unrolled for keep "
        "steps, one graph per span length) against the any-length selector (the greedy as an ONNX Loop counted "
        f"by the length of `keep_rows`, one graph per width). One image span of {first['tokens']} rows in a "
        f"prompt of {first['text_tokens']} real rows, batch 1, the full `select_input` feeds; ONNX Runtime CPU, "
        f"interleaved A/B rounds, medians of {repeats} after a warm-up. 'Same selection': both return identical "
        "kept indices and outputs. Nodes: top-level (+ inside the Loop body). Export: seconds to export the "
        "graph (the Loop graph once per width).",
        "",
        "| width | keep | unrolled ms | Loop ms | same selection | nodes (unrolled / Loop) "
        "| export s (unrolled / Loop) |",
        "|---:|---:|---:|---:|---|---|---|",
    ]
    for r in cdp:
        u, lo = r["nodes"]["unrolled"], r["nodes"]["loop"]
        lines.append(
            f"| {r['width']} | {r['keep']} | {r['unrolled_ms']:.2f} | {r['loop_ms']:.2f} | {r['same_selection']} | "
            f"{u['top']} / {lo['top']} (+{lo['loop_body']}) | "
            f"{r['export_s']['unrolled']:.1f} / {r['export_s']['loop']:.1f} |"
        )
    lines += [
        "",
        "DART's fixed-length selector at the same settings: "
        + "; ".join(f"width {r['width']}, keep {r['keep']}: {r['ms']:.2f} ms ({r['nodes']['top']} nodes)" for r in dart)
        + ".",
    ]
    _reserve_after_divprune(path)
    write_section(path, MARK, lines)


def _reserve_after_divprune(path: Path) -> None:
    """A new section goes right after the DivPrune one (``write_section`` would append it at the end)."""
    text = path.read_text() if path.exists() else ""
    if MARK in text or "<!-- divprune -->" not in text:
        return
    head, mark, tail = text.partition("<!-- divprune -->")
    section, sep, rest = tail.partition("\n<!-- ")
    path.write_text(head + mark + section.rstrip("\n") + "\n\n" + MARK + "\n" + sep + rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=576, help="image span rows")
    parser.add_argument("--widths", default="1536,4096", help="comma-separated embedding widths at the LLM input")
    parser.add_argument("--keeps", default="64,144", help="comma-separated kept-token counts")
    parser.add_argument("--text-tokens", type=int, default=64, help="real prompt rows")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--write", action="store_true", help="write the section of --output")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    keeps = [int(k) for k in args.keeps.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in (int(w) for w in args.widths.split(",")):
            rows += measure_width(args, width, keeps, Path(tmp))
    if args.write:
        write_cdpruner_section(args.output, rows, args.repeats)


if __name__ == "__main__":
    main()
