"""Parity of the exported graphs with eager PyTorch, run inside ``tpc compile``.

* vision: kept indices equal the method's eager reference (identical, or different only
  between exactly tied scores) and the features match within tolerance, batch 1 and 2;
* embedding: placeholder rows carry the image features, other rows the token embeddings;
* decoder: prefill and decode logits match Hugging Face's own language model with its
  own 2-D mask and cache, on a left-padded batch of 2.
"""

from __future__ import annotations

import numpy as np
import torch

from tpc.artifact_layout import GRID_VISION_INPUT
from tpc.compiler.parity import ATOL, RTOL, close, compare_indices
from tpc.errors import ParityError
from tpc.methods.selection import gather_tokens


@torch.no_grad()
def verify_vision(graphs, adapter, method, keep: int, params: dict | None = None, seed: int = 0) -> list[dict]:
    layout = adapter.vision
    generator = torch.Generator().manual_seed(seed)
    results = []
    for batch in (1, 2):
        pixels = torch.randn(batch, 3, layout.image_size, layout.image_size, generator=generator)
        features, kept = graphs.vision(pixels.numpy())
        verdict, diff, ok = check_selection(features, kept, adapter, method, pixels, keep, params or {})
        results.append({"batch": batch, "indices": verdict, "features_max_abs_diff": diff, "passed": ok})
    return results


def check_selection(features, kept, adapter, method, pixels, keep: int, params: dict) -> tuple[str, float, bool]:
    """(index verdict, feature diff, passed) of one vision call against the method's eager reference; a tie
    among equal scores is compared at the graph's own picks (gathering methods only)."""
    ref_indices, ref_features, scores = method.reference(adapter, pixels, keep, **params)
    verdict = compare_indices(kept, ref_indices.numpy(), None if scores is None else scores.numpy())
    if verdict == "tie-equivalent" and not method.extra.get("gathers"):
        verdict = "mismatch"  # a tie changes merged tokens: nothing to compare against
    if verdict == "tie-equivalent":  # compare features against the reference at the graph's own picks
        picks = torch.from_numpy(np.asarray(kept))
        ref_features = adapter.project(gather_tokens(adapter.reference_vision(pixels)["patches"], picks))
    ok, diff = close(features, ref_features.numpy())
    return verdict, diff, bool(ok and verdict != "mismatch")


@torch.no_grad()
def verify_grid_vision(graphs, adapter, method, params: dict, info: dict, seed: int = 0) -> list[dict]:
    """Every grid's graph, batch 1 and 2, against the method's reference run by Hugging Face's own tower."""
    generator = torch.Generator().manual_seed(seed)
    results = []
    for name, grid in info["grids"].items():
        view = adapter.for_grid(tuple(grid))
        keep = info["keep"][name]
        for batch in (1, 2):
            patches = torch.randn(batch, grid[0] * grid[1], adapter.patch_values, generator=generator)
            features, kept = graphs.run_graph(name, {GRID_VISION_INPUT: patches.numpy()})
            verdict, diff, ok = check_selection(features, kept, view, method, patches, keep, params)
            results.append(
                {
                    "grid": list(grid),
                    "batch": batch,
                    "keep": keep,
                    "indices": verdict,
                    "features_max_abs_diff": diff,
                    "passed": ok,
                }
            )
    return results


@torch.no_grad()
def verify_embedding(graphs, adapter, keep: int, seed: int = 1) -> dict:
    text = adapter.text
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(text.vocab_size, 256), size=(2, keep + 6)).astype(np.int64)
    ids[ids == text.image_token_id] = 0
    ids[:, 3 : 3 + keep] = text.image_token_id
    features = rng.standard_normal((2, keep, adapter.vision.feature_dim)).astype(np.float32)
    actual = graphs.embed(ids, features)
    expected = adapter.embedding_step()(torch.from_numpy(ids), torch.from_numpy(features)).numpy()
    ok, diff = close(actual, expected)
    return {"max_abs_diff": diff, "passed": ok}


@torch.no_grad()
def verify_decoder(
    graphs, adapter, runtime: dict | None = None, seed: int = 2, prompt_len: int = 6, steps: int = 2
) -> dict:
    """Text-only prefill + decode against HF's language model (a staged decoder does not prune here).

    M-RoPE decoders get 3-D positions whose height and width components differ from the temporal one
    (as an image block's do), so each rotary section is checked."""
    from transformers import DynamicCache

    from tpc.models.decoder_common import cache_kwargs
    from tpc.runtimes.decoders import make_decoder

    text = adapter.text
    model = adapter.model
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(2, prompt_len, text.hidden_size, generator=generator) * 0.5
    mask = torch.ones(2, prompt_len, dtype=torch.int64)
    mask[1, :2] = 0  # left padding on the second sample
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    if text.position_dims == 3:  # t, h, w: h and w run ahead of t on some rows, as inside an image block
        bump = torch.arange(prompt_len) % 3
        bump[-1] = 0  # the last prompt token is text: decode continues from it
        positions = torch.stack([positions, positions + bump, positions + 2 * bump], dim=-1) * mask[..., None]
    cache = DynamicCache(config=model.config.text_config)
    decoder = make_decoder(
        graphs, runtime or {"num_kv_heads": text.num_kv_heads, "head_dim": text.head_dim, "num_layers": text.num_layers}
    )
    worst, greedy_equal, passed = 0.0, True, True
    for step in range(steps + 1):
        out = model.model.language_model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions.permute(2, 0, 1) if positions.dim() == 3 else positions,
            use_cache=True,
            **cache_kwargs(model.model.language_model, cache),
        )
        expected = model.lm_head(out.last_hidden_state[:, -1]).numpy()
        logits = (
            decoder.prefill(embeds.numpy(), mask.numpy(), positions.numpy())
            if step == 0
            else decoder.step(embeds.numpy())
        )
        ok, diff = close(logits, expected)
        worst, passed = max(worst, diff), passed and ok
        greedy_equal &= bool(np.array_equal(logits.argmax(-1), expected.argmax(-1)))
        embeds = torch.randn(2, 1, text.hidden_size, generator=generator) * 0.5
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.int64)], dim=1)
        positions = positions[:, -1:] + 1
    return {"steps": steps + 1, "logits_max_abs_diff": worst, "greedy_equal": greedy_equal, "passed": passed}


@torch.no_grad()
def verify_buckets(graphs, adapter, method, params: dict, info: dict, runtime: dict, seed: int = 0) -> list[dict]:
    """Every bucket (batch 1 and 2) against the method's reference at that K; adaptive counts too."""
    from tpc.methods.adaptive import reference_mass_count
    from tpc.runtimes.buckets import BucketedVision, bucket_for

    layout = adapter.vision
    generator = torch.Generator().manual_seed(seed)
    results = []
    for batch in (1, 2):
        pixels = torch.randn(batch, 3, layout.image_size, layout.image_size, generator=generator)
        vision = BucketedVision(graphs, info, dict(runtime))
        sizes = info["sizes"]
        if info.get("adaptive"):
            _, _, scores = method.reference(adapter, pixels, sizes[-1], **params)
            wanted = [
                min(bucket_for(c, sizes + [10**9]), sizes[-1]) for c in reference_mass_count(scores, params["mass"])
            ]
            plans = [(None, wanted)]
        else:
            plans = [(k, [k] * batch) for k in sizes]
        for keep, wanted in plans:
            if keep is not None:
                vision.request(keep=keep)
            features, kept, counts = vision(pixels.numpy())
            entry = {
                "batch": batch,
                "bucket": keep if keep is not None else "adaptive",
                "counts": counts,
                "passed": counts == wanted,
            }
            worst, verdicts = 0.0, []
            for row, size in enumerate(counts):
                ref_idx, ref_feat, ref_scores = method.reference(adapter, pixels[row : row + 1], size, **params)
                verdict = compare_indices(
                    kept[row : row + 1, :size], ref_idx.numpy(), None if ref_scores is None else ref_scores.numpy()
                )
                ok, diff = close(features[row : row + 1, :size], ref_feat.numpy())
                verdicts.append(verdict)
                worst = max(worst, diff)
                entry["passed"] = entry["passed"] and ok and verdict == "exact"
            entry.update(
                indices="exact" if all(v == "exact" for v in verdicts) else "mismatch", features_max_abs_diff=worst
            )
            results.append(entry)
    return results


def verify_graphs(
    graphs,
    adapter,
    method,
    keep: int,
    params: dict | None = None,
    buckets: dict | None = None,
    runtime: dict | None = None,
    llm_plans: dict | None = None,
    grid_info: dict | None = None,
) -> dict:
    """``llm_plans``: in-LLM plans by bucket size (None: the fixed-K artifact's only plan); ``grid_info``:
    the vision graphs of a grid family (one per compiled grid)."""
    if grid_info:
        vision = verify_grid_vision(graphs, adapter, method, params or {}, grid_info)
    elif buckets:
        vision = verify_buckets(graphs, adapter, method, params or {}, buckets, runtime)
    else:
        vision = verify_vision(graphs, adapter, method, keep, params)
    report = {
        "vision": vision,
        "embed": verify_embedding(graphs, adapter, keep),
        "decoder": verify_decoder(graphs, adapter, runtime),
        "tolerance": {"rtol": RTOL, "atol": ATOL},
    }
    if llm_plans:
        from tpc.compiler.verify_llm import verify_selectors, verify_staged_decoder

        rule = (runtime or {}).get("llm_pruning_rule")
        if rule is not None:  # one selector per stage for any block length: checked at several lengths
            llm_plans = dynamic_check_plans(rule, adapter)
        # end to end (segments + selectors, prefill and decode) for the shortest and the longest image
        # block; every selector of every length alone (they differ only in their constant counts)
        ends = {min(llm_plans, key=_length_key), max(llm_plans, key=_length_key)}
        report["llm_pruning"] = [
            entry
            for bucket, plan in llm_plans.items()
            if bucket in ends
            for entry in verify_staged_decoder(graphs, adapter, plan, runtime, bucket=None if rule else bucket)
        ]
        report["llm_selectors"] = [
            entry
            for bucket, plan in llm_plans.items()
            for entry in verify_selectors(
                graphs,
                plan,
                adapter.text.hidden_size,
                None if rule else bucket,
                bool(rule),
                dims=adapter.text.position_dims,
            )
        ]
    report["passed"] = (
        all(r["passed"] for r in report["vision"])
        and report["embed"]["passed"]
        and report["decoder"]["passed"]
        and all(r["passed"] for r in report.get("llm_pruning", []))
        and all(r["passed"] for r in report.get("llm_selectors", []))
    )
    if not report["passed"]:
        raise ParityError("compiled graphs disagree with the PyTorch reference: " + summarize(report))
    return report


def dynamic_check_plans(rule: dict, adapter) -> dict:
    """Plans at the image-block lengths a length-independent selector is checked at: the longest block
    a picture can have, about half of it (odd), and one crop's tokens plus one."""
    from tpc.methods.in_llm import plan_for_length

    longest = rule["max_image_tokens"]
    lengths = sorted({longest, longest // 2 | 1, min(longest, adapter.vision.num_patches + 1)})
    return {n: plan_for_length(rule, adapter.text.num_layers, n) for n in lengths}


def _length_key(bucket) -> int:
    return -1 if bucket is None else int(bucket)


def summarize(report: dict) -> str:
    parts = [
        f"vision{' ' + 'x'.join(map(str, r['grid'])) if 'grid' in r else ''} b{r['batch']}"
        f"{' k' + str(r['bucket']) if 'bucket' in r else ''}: indices {r['indices']}, "
        f"features diff {r['features_max_abs_diff']:.2e}"
        for r in report["vision"]
    ]
    parts.append(f"embed diff {report['embed']['max_abs_diff']:.2e}")
    parts.append(f"decoder logits diff {report['decoder']['logits_max_abs_diff']:.2e}")
    parts += [
        f"{r['method']} b{r['batch']}{' k' + str(r['bucket']) if r.get('bucket') else ''}: "
        f"kept {'/'.join(r['kept'])}, logits diff {r['logits_max_abs_diff']:.2e}, "
        f"kv lengths {'ok' if r['kv_lengths_ok'] else 'WRONG'}"
        for r in report.get("llm_pruning", [])
    ]
    parts += [
        f"selector {r['stage']} of the {r['image_tokens']}-token block: wrong"
        for r in report.get("llm_selectors", [])
        if not r["passed"]
    ]
    return "; ".join(parts)


@torch.no_grad()
def verify_layout(graphs, adapter, method, keep: int, params: dict, runtime: dict, root) -> list[dict]:
    """Multi-crop families: a picture of every crop grid through the compiled vision graph and the
    runtime's arrangement of its rows, against the adapter's reference (Hugging Face unpruned)."""
    from tpc.runtimes.layouts import image_layout

    layout = image_layout(runtime, root)
    results = []
    for label, image in adapter.layout_samples():
        crops = layout.crops(adapter.processor.image_processor, [image])
        features, kept = graphs.vision(crops.pixel_values)
        counts = [int(features.shape[1])] * len(crops.pixel_values)
        assembled = layout.assemble(crops, features, kept, counts)
        rows, labels = adapter.reference_rows(image, method, keep, params)
        got = assembled.features[0, : assembled.counts[0]]
        same_count = got.shape[0] == rows.shape[0]
        ok, diff = close(got, rows.numpy()) if same_count else (False, float("inf"))
        order = (
            "n/a"
            if labels is None
            else ("exact" if np.array_equal(assembled.kept[0, : len(labels)], labels.numpy()) else "mismatch")
        )
        results.append(
            {
                "picture": label,
                "crops": int(crops.per_image[0]),
                "rows": int(assembled.counts[0]),
                "reference_rows": int(rows.shape[0]),
                "order": order,
                "max_abs_diff": diff,
                "passed": bool(ok and same_count and order != "mismatch"),
            }
        )
    return results
