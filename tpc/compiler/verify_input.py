"""Parity of the LLM-input selection (DART, CDPruner) with independent references, run inside compile.

* every ``select_input`` graph alone, per span length: kept indices equal the naive
  per-sample reference (``tpc.methods.llm_input_reference``) on a batch of 2 with
  different prompts and text masks, spans at different offsets, left padding and
  duplicated (tied) image rows; the shortened embeddings, mask and ORIGINAL positions
  equal the rows gathered at those indices;
* CDPruner's selector for spans of any length (an ONNX Loop of ``len(keep_rows)`` steps) is fed a
  quota of its own: exact against the naive DPP for the first ``exact_steps`` picks (the naive
  reference recomputes determinants, and past the embeddings' rank, at most the hidden size, every
  gain is rounding noise, so no two implementations agree there), then run at the full quota:
  ``keep`` distinct ascending indices of the span that contain those picks (greedy MAP is
  prefix-consistent) and rows gathered at them;
* end to end: the runtime's selection then the compiled decoder, against the PyTorch
  language model run per sample on the same kept rows with the original positions
  (prefill logits and one decode step continuing after the unpruned length).
"""

from __future__ import annotations

import numpy as np
import torch

from tpc.compiler.parity import close
from tpc.methods.llm_input import input_reference


def _batch(n: int, hidden: int, seed: int, dims: int = 1):
    """Embeddings [2,T,D], mask, positions, span starts and text mask: sample 1 left-padded, a shorter
    prompt (some text rows masked out as if they were padding) and a span two rows later. ``dims`` 3:
    M-RoPE positions [2,T,3] with the span laid out as a grid (``verify_llm.grid_positions``)."""
    generator = torch.Generator().manual_seed(seed)
    t = n + 11
    embeds = torch.randn(2, t, hidden, generator=generator) * 0.5
    starts = torch.tensor([2, 5], dtype=torch.int64)
    for b, start in enumerate(starts.tolist()):
        embeds[b, start + 1] = embeds[b, start]  # a duplicated image row: ties on L1 and cosine
        embeds[b, start + n - 1] = embeds[b, start + n // 2]
    mask = torch.ones(2, t, dtype=torch.int64)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    image = torch.zeros(2, t, dtype=torch.bool)
    for b, start in enumerate(starts.tolist()):
        image[b, start : start + n] = True
    text_mask = ((~image) & (mask != 0)).to(torch.int64)
    text_mask[1, -3:-1] = 0  # a different prompt: fewer real text rows
    if dims == 3:
        from tpc.compiler.verify_llm import grid_positions

        positions = grid_positions(mask, starts, n)
    return embeds, mask, positions, starts, text_mask


def _reference_rows(embeds, mask, positions, starts, kept, n: int):
    rows = []
    for b, start in enumerate(starts.tolist()):
        index = torch.cat([torch.arange(start), start + kept[b], torch.arange(start + n, embeds.shape[1])])
        rows.append((embeds[b, index], positions[b, index], mask[b, index]))
    return [torch.stack(parts) for parts in zip(*rows, strict=True)]


EXACT_STEPS = 16  # the naive DPP's cost grows as steps^2 * n determinants


def exact_steps(plan: dict, span: dict, hidden: int) -> int:
    """The quota checked exactly against the reference: the span's own, or for CDPruner's any-length Loop the
    first picks only (bounded by the naive reference's cost and by the rank of the embeddings)."""
    if plan["method"] != "cdpruner" or not span.get("any_length"):
        return span["keep"]
    return min(span["keep"], EXACT_STEPS, max(1, hidden // 2))


def _full_quota(got, exact_kept, embeds, mask, positions, starts, n: int, keep: int) -> bool:
    """The selector's outputs at the full quota: ``keep`` distinct ascending span indices that contain the
    exactly checked picks, and rows gathered at them."""
    kept = torch.from_numpy(np.asarray(got[3]))
    if kept.shape != (2, keep) or not bool((kept[:, 1:] > kept[:, :-1]).all() and (kept >= 0).all()):
        return False
    if not bool((kept < n).all()):
        return False
    if not all(set(e.tolist()) <= set(k.tolist()) for e, k in zip(exact_kept, kept, strict=True)):
        return False
    want = _reference_rows(embeds, mask, positions, starts, kept, n)
    return all(np.array_equal(np.asarray(g), w.numpy()) for g, w in zip(got[:3], want, strict=True))


@torch.no_grad()
def check_lengths(plan: dict, crop_tokens: int) -> dict[str, dict]:
    """The spans a selector is checked at: every compiled length, or for the any-length selector the longest
    span a picture can have, about half of it (odd) and one crop's tokens plus one."""
    from tpc.methods.llm_input import input_keep

    if not plan.get("any_length"):
        return plan["spans"]
    longest = plan["any_length"]["max_image_tokens"]
    lengths = sorted({longest, longest // 2 | 1, min(longest, crop_tokens + 1)})
    graph = plan["any_length"]["graph"]
    return {str(n): {"keep": input_keep(n, plan["ratio"]), "graph": graph, "any_length": True} for n in lengths}


def verify_input_selectors(
    graphs, plan: dict, hidden: int, seed: int = 7, dims: int = 1, crop_tokens: int = 0
) -> list[dict]:
    reference = input_reference(plan["method"])
    results = []
    for length, span in check_lengths(plan, crop_tokens).items():
        n, keep, exact = int(length), span["keep"], exact_steps(plan, span, hidden)
        embeds, mask, positions, starts, text_mask = _batch(n, hidden, seed + n, dims)
        image = torch.stack([embeds[b, s : s + n] for b, s in enumerate(starts.tolist())])
        kept = reference(image, embeds, text_mask, exact, **plan["parameters"])
        want = [*_reference_rows(embeds, mask, positions, starts, kept, n), kept]
        feeds = {
            "inputs_embeds": embeds.numpy(),
            "attention_mask": mask.numpy(),
            "position_ids": positions.numpy(),
            "image_start": starts.numpy(),
            "text_mask": text_mask.numpy(),
        }
        if span.get("any_length"):
            feeds.update(image_rows=np.arange(n), keep_rows=np.arange(exact))
        got = graphs.run_graph(span["graph"], feeds)
        indices = bool(np.array_equal(np.asarray(got[3]), kept.numpy()))
        rows = all(np.array_equal(np.asarray(g), w.numpy()) for g, w in zip(got[:3], want[:3], strict=True))
        result = {"graph": span["graph"], "image_tokens": n, "keep": keep, "indices_equal": indices}
        if exact < keep:  # the rest of the quota: consistent with the exact picks
            feeds["keep_rows"] = np.arange(keep)
            full = graphs.run_graph(span["graph"], feeds)
            consistent = _full_quota(full, kept, embeds, mask, positions, starts, n, keep)
            result.update(exact_keep=exact, full_quota_ok=consistent)
            rows = rows and consistent
        results.append({**result, "passed": indices and rows})
    return results


@torch.no_grad()
def verify_input_end_to_end(graphs, adapter, runtime: dict, seed: int = 11) -> dict:
    """The longest span: runtime selection + compiled decoder vs the language model on the kept rows."""
    from tpc.runtimes.decoders import FlatDecoder
    from tpc.runtimes.input_select import select_at_input

    plan = runtime["input_selection"]
    n = max(int(length) for length in plan["spans"]) if plan["spans"] else plan["any_length"]["max_image_tokens"]
    model, image_id = adapter.model, runtime["image_token_id"]
    dims = adapter.text.position_dims
    embeds, mask, positions, starts, _ = _batch(n, adapter.text.hidden_size, seed, dims)
    ids = np.full(mask.shape, 1 if image_id != 1 else 2, dtype=np.int64)
    for b, start in enumerate(starts.tolist()):
        ids[b, start : start + n] = image_id
    short, short_mask, short_positions, kept = select_at_input(
        graphs, runtime, ids, embeds.numpy(), mask.numpy(), positions.numpy()
    )
    decoder = FlatDecoder(graphs, runtime)
    step = torch.randn(2, 1, adapter.text.hidden_size, generator=torch.Generator().manual_seed(seed)) * 0.5
    got = [decoder.prefill(short, short_mask, short_positions), decoder.step(step.numpy())]
    worst, ok = 0.0, True
    positions_ok = True
    lm = model.model.language_model
    for b in range(2):
        keep_rows = torch.from_numpy(kept[b][kept[b] >= 0])
        start = int(starts[b])
        index = torch.cat([torch.arange(start), start + keep_rows, torch.arange(start + n, embeds.shape[1])])
        index = index[mask[b, index] != 0]  # the real rows only: padding changes nothing
        rows, pos = embeds[b : b + 1, index], positions[b : b + 1, index]
        positions_ok &= bool(np.array_equal(short_positions[b][short_mask[b] != 0], pos[0].numpy()))
        full_rows = torch.cat([rows, step[b : b + 1]], dim=1)
        full_pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
        for i, length in enumerate((rows.shape[1], full_rows.shape[1])):
            hf_pos = full_pos[:, :length]
            out = lm(inputs_embeds=full_rows[:, :length], position_ids=hf_pos.permute(2, 0, 1) if dims == 3 else hf_pos)
            want = model.lm_head(out.last_hidden_state[:, -1]).numpy()
            good, diff = close(got[i][b : b + 1], want)
            worst, ok = max(worst, diff), ok and good
    return {
        "image_tokens": n,
        "logits_max_abs_diff": worst,
        "positions_ok": positions_ok,
        "passed": ok and positions_ok,
    }


def verify_input_stage(graphs, adapter, runtime: dict) -> dict:
    plan = runtime["input_selection"]
    selectors = verify_input_selectors(
        graphs, plan, adapter.text.hidden_size, dims=adapter.text.position_dims, crop_tokens=adapter.vision.num_patches
    )
    end_to_end = verify_input_end_to_end(graphs, adapter, runtime)
    return {"selectors": selectors, "end_to_end": end_to_end}


def failures(report: dict) -> list[str]:
    bad = [f"{r['graph']} ({r['image_tokens']} tokens)" for r in report["selectors"] if not r["passed"]]
    if not report["end_to_end"]["passed"]:
        e = report["end_to_end"]
        bad.append(f"decoder on the kept rows: diff {e['logits_max_abs_diff']:.2e}, positions {e['positions_ok']}")
    return bad
