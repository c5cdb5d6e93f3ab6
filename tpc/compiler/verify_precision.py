"""Agreement of a reduced-precision artifact (fp16 graphs, int4/int8 decoder weights) with fp32.

The reference is the same checkpoint computing in fp32 (``tpc.models.upcast``: upcast block
by block, no second copy of the weights). Checked, with thresholds recorded in the manifest:

* vision, batch 1 and 2 (at every compiled bucket's K, or grid): kept indices equal the fp32
  reference's, or differ only among tokens whose fp32 scores lie within the precision's rounding
  of the k-th score ("near-tie"); the projected features' cosine;
* decoder, over a fixed set of prompts (random token ids with an image block carrying the
  reference's features; batch 2, left-padded): the logit cosine of prefill and of every
  decode step, and greedy-token agreement, both runs fed the reference's greedy token at each
  step so that one flip does not decide every later step.
"""

from __future__ import annotations

import numpy as np
import torch

from tpc.compiler.agreement import NEAR_TIE, cosine, greedy_verdict, index_verdict  # noqa: F401 (re-exported)
from tpc.errors import ParityError

MIN_FEATURE_COSINE = 0.999
PROMPTS = 4
STEPS = 6


@torch.no_grad()
def vision_references(adapter, method, keep: int, params: dict, seed: int = 0) -> list[dict]:
    """The fp32 reference's selection of random pictures (batch 1 and 2), as numpy arrays.

    ``all_features`` (a gathering method's every token, projected) lets a near-tie be compared at
    the graph's own picks later, without the model: the projector acts token by token.
    """
    size = adapter.vision.image_size
    generator = torch.Generator().manual_seed(seed)
    references = []
    for batch in (1, 2):
        pixels = torch.randn(batch, 3, size, size, generator=generator)
        indices, features, scores = method.reference(adapter, pixels, keep, **params)
        everything = None
        if method.extra.get("gathers"):
            everything = adapter.project(adapter.reference_vision(pixels)["patches"]).float().numpy()
        references.append(
            {
                "batch": batch,
                "pixels": pixels.numpy(),
                "indices": indices.numpy(),
                "features": features.float().numpy(),
                "scores": None if scores is None else scores.float().numpy(),
                "all_features": everything,
                "greedy": bool(method.extra.get("greedy")),
            }
        )
    return references


@torch.no_grad()
def bucket_vision_references(adapter, method, params: dict, sizes: list[int], seed: int = 0) -> list[dict]:
    """``vision_references`` of a bucketed artifact: every compiled bucket K (batch 1 and 2, the same
    pictures for every K) against the method's reference at that K."""
    references = []
    for keep in sizes:
        for ref in vision_references(adapter, method, keep, params, seed):
            references.append(dict(ref, bucket=keep))
    return references


@torch.no_grad()
def grid_vision_references(adapter, method, params: dict, grids: dict, seed: int = 0) -> list[dict]:
    """``vision_references`` of a grid family (Qwen2.5-VL): every compiled grid's graph, batch 1 and 2, on
    random patches ``[B, L, P]``, against the method's reference at that grid (the adapter's per-grid view).

    ``grids``: the compile's ``grid_vision`` record (``grids``: graph name -> grid, ``keep``: graph name -> K).
    """
    from tpc.artifact_layout import GRID_VISION_INPUT

    generator = torch.Generator().manual_seed(seed)
    references = []
    for name, grid in grids["grids"].items():
        view = adapter.for_grid(tuple(grid))
        keep = grids["keep"][name]
        for batch in (1, 2):
            patches = torch.randn(batch, grid[0] * grid[1], adapter.patch_values, generator=generator)
            indices, features, scores = method.reference(view, patches, keep, **params)
            everything = None
            if method.extra.get("gathers"):
                everything = view.project(view.reference_vision(patches)["patches"]).float().numpy()
            references.append(
                {
                    "graph": name,
                    "grid": list(grid),
                    "input": GRID_VISION_INPUT,
                    "batch": batch,
                    "pixels": patches.numpy(),
                    "indices": indices.numpy(),
                    "features": features.float().numpy(),
                    "scores": None if scores is None else scores.float().numpy(),
                    "all_features": everything,
                    "greedy": bool(method.extra.get("greedy")),
                }
            )
    return references


def compare_vision(graphs, references: list[dict], buckets: dict | None = None) -> list[dict]:
    """``buckets``: a bucketed artifact's ``buckets`` record: each reference runs at its own bucket."""
    results = []
    for ref in references:
        if "graph" in ref:  # one graph per compiled grid
            features, kept = graphs.run_graph(ref["graph"], {ref["input"]: ref["pixels"]})
            kept = np.asarray(kept).astype(np.int64)
        elif "bucket" in ref:  # encoder, the bucket's selector, projector
            from tpc.runtimes.buckets import BucketedVision

            vision = BucketedVision(graphs, buckets, {"keep": ref["bucket"]})
            features, kept, _ = vision(ref["pixels"])
        else:
            features, kept = graphs.vision(ref["pixels"])
        verdict, overlap = index_verdict(kept, ref["indices"], ref["scores"])
        if verdict == "mismatch" and ref.get("greedy") and kept.shape == ref["indices"].shape:
            verdict = greedy_verdict(kept.astype(np.int64), ref["all_features"], np.asarray(features, np.float32))
        want = ref["features"]
        if verdict == "near-tie" and ref["all_features"] is not None:  # the reference at the graph's own picks
            picks = kept.astype(np.int64)[..., None]
            want = np.take_along_axis(ref["all_features"], picks, axis=1)
        elif verdict == "near-tie":  # a swap changes what merged tokens hold: no row-by-row comparison
            want = features.astype(np.float32)
        feature_cosine = float(cosine(features.reshape(-1, features.shape[-1]), want.reshape(-1, want.shape[-1])).min())
        results.append(
            {
                **({"graph": ref["graph"], "grid": ref["grid"]} if "graph" in ref else {}),
                **({"bucket": ref["bucket"]} if "bucket" in ref else {}),
                "batch": ref["batch"],
                "indices": verdict,
                "kept_overlap": overlap,
                "feature_cosine_min": feature_cosine,
                "passed": verdict != "mismatch" and feature_cosine >= MIN_FEATURE_COSINE,
            }
        )
    return results


@torch.no_grad()
def decoder_references(adapter, features: torch.Tensor, seed: int = 7, image_grid: dict | None = None) -> list[dict]:
    """``PROMPTS`` prompts (batch 2 per call, the second left-padded) of ``STEPS`` + 1 greedy steps:
    the inputs and the fp32 reference's logits at every step (teacher-forced with its own tokens).

    ``image_grid`` (M-RoPE decoders, ``position_dims`` 3): ``{"grid": (h, w) in patches, "merge": m,
    "kept": [B, K] merged-token indices}`` of the pictures whose features fill the image block. The
    prompts then carry 3-D positions (``qwen_geometry.mrope_positions``: the kept tokens at their unpruned
    grid positions, the text after the image past the grid's extent), ``[B, S, 3]`` as the graphs take
    them and ``[3, B, S]`` for Hugging Face; decode steps continue at the last position + 1 on every axis
    (what ``FlatDecoder`` feeds). The image block starts after the second row's padding."""
    from transformers import DynamicCache

    from tpc.models.decoder_common import cache_kwargs

    text, model = adapter.text, adapter.model
    lm = model.model.language_model
    rng = np.random.default_rng(seed)
    keep = features.shape[1]
    image = features[:2] if features.shape[0] >= 2 else features.expand(2, -1, -1)
    start = 2 if image_grid is None else 4  # 3-D positions need every image token unpadded
    prompts = []
    for prompt in range(PROMPTS // 2):
        length = keep + 8 + 3 * prompt
        ids = rng.integers(1, min(text.vocab_size, 1000), size=(2, length)).astype(np.int64)
        ids[ids == text.image_token_id] = 1
        ids[:, start : start + keep] = text.image_token_id
        mask = np.ones((2, length), dtype=np.int64)
        mask[1, :3] = 0
        if image_grid is None:
            positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        else:
            positions = _grid_positions(ids, mask, text.image_token_id, image_grid)
        ref_in = adapter.embedding_step()(torch.from_numpy(ids), image.float().to(_dtype(model))).float()
        ref_mask, ref_pos = torch.from_numpy(mask), torch.from_numpy(positions)
        cache = DynamicCache(config=model.config.text_config)
        logits = []
        for _step in range(STEPS + 1):
            out = lm(
                inputs_embeds=ref_in,
                attention_mask=ref_mask,
                position_ids=ref_pos if ref_pos.dim() == 2 else ref_pos.permute(2, 0, 1),  # HF: [3, B, S]
                use_cache=True,
                **cache_kwargs(lm, cache),
            )
            logits.append(model.lm_head(out.last_hidden_state[:, -1]).float().numpy())
            token = torch.from_numpy(logits[-1].argmax(-1)[:, None].astype(np.int64))
            ref_in = model.get_input_embeddings()(token).float()
            ref_mask = torch.cat([ref_mask, torch.ones(2, 1, dtype=torch.int64)], dim=1)
            ref_pos = ref_pos[:, -1:] + 1
        prompts.append(
            {"ids": ids, "mask": mask, "positions": positions, "image": image.float().numpy(), "logits": logits}
        )
    return prompts


def _grid_positions(ids: np.ndarray, mask: np.ndarray, image_token_id: int, image_grid: dict) -> np.ndarray:
    """``[B, S, 3]`` M-RoPE positions of prompts whose one image block holds ``image_grid``'s kept tokens, in
    the order the method emits them (what the runtime feeds: a kept token at its unpruned grid position)."""
    from tpc.models.qwen_geometry import mrope_positions

    grid, kept = tuple(image_grid["grid"]), np.asarray(image_grid["kept"], dtype=np.int64)
    rows = len(ids)
    kept = kept[:rows] if len(kept) >= rows else np.repeat(kept[:1], rows, axis=0)
    return mrope_positions(ids, mask, image_token_id, [[grid]] * rows, int(image_grid["merge"]), [[k] for k in kept])


def compare_decoder(graphs, prompts: list[dict], runtime: dict, pieces=None) -> dict:
    """Logit cosine and greedy agreement of the graphs fed the reference's inputs and tokens.

    ``pieces``: ``(DecoderPieces, session options)`` to run the decoder a few layers at a time
    (``tpc.compiler.verify_segments``) instead of ``graphs.decoder``: a half-precision 7 B decoder
    does not fit ONNX Runtime's CPU provider whole."""
    calls = []
    for prompt in prompts:
        steps = [{"inputs_embeds": graphs.embed(prompt["ids"], prompt["image"])}]
        mask, positions = prompt["mask"], prompt["positions"]
        steps[0].update(attention_mask=mask, position_ids=positions)
        for expected in prompt["logits"][:-1]:  # both continue with the reference's token
            token = expected.argmax(-1)[:, None].astype(np.int64)
            mask = np.concatenate([mask, np.ones((len(token), 1), np.int64)], axis=1)
            positions = positions[:, -1:] + 1
            embeds = graphs.embed(token, np.zeros((len(token), 1, runtime["feature_dim"]), np.float32))
            steps.append({"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions})
        calls.append(steps)
    if pieces is not None:
        got = pieces[0].run(pieces[1], calls)
    else:
        got = [_run_whole(graphs, steps, runtime) for steps in calls]
    cosines, agree, total = [], 0, 0
    for prompt, logits in zip(prompts, got, strict=True):
        for expected, value in zip(prompt["logits"], logits, strict=True):
            cosines += cosine(value, expected).tolist()
            agree += int((value.argmax(-1) == expected.argmax(-1)).sum())
            total += len(expected)
    return {
        "prompts": PROMPTS,
        "steps": STEPS + 1,
        "logit_cosine_min": float(min(cosines)),
        "logit_cosine_mean": float(np.mean(cosines)),
        "token_agreement": agree / total,
        "run": "whole" if pieces is None else f"in {len(pieces[0].models)} pieces",
    }


def _run_whole(graphs, steps: list[dict], runtime: dict) -> list[np.ndarray]:
    from tpc.runtimes.decoders import FlatDecoder

    decoder = FlatDecoder(graphs, runtime)
    first = steps[0]
    logits = [decoder.prefill(first["inputs_embeds"], first["attention_mask"], first["position_ids"])]
    return logits + [decoder.step(step["inputs_embeds"]) for step in steps[1:]]


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def reduced_references(
    adapter,
    method,
    keep: int,
    params: dict | None,
    grids: dict | None = None,
    buckets: dict | None = None,
    llm: dict | None = None,
) -> dict:
    """Everything the agreement check compares against, computed by the fp32 reference up front, so
    that the model's weights can be freed before any graph is loaded (a 7 B model and its graphs
    never share the memory).

    ``grids``: a grid family's ``grid_vision`` record (one vision graph per compiled grid): the vision
    references are per grid (``grid_vision_references``) and the decoder's image block holds pictures of
    the largest grid, at the 3-D positions of the tokens they kept. ``buckets``: a bucketed artifact's
    ``buckets`` record (fixed budgets only): the vision references are per bucket (``bucket_vision_references``),
    the decoder's image block holds the default bucket's features. ``llm``: ``{"plans", "rule"}`` of in-LLM
    pruning: the staged decoder's references (``tpc.compiler.verify_llm_precision``) replace the flat one's."""
    from tpc.models.upcast import fp32_reference

    params = params or {}
    with fp32_reference(adapter.model):
        generator = torch.Generator().manual_seed(11)
        if grids:
            vision = grid_vision_references(adapter, method, params, grids)
            name, grid = max(grids["grids"].items(), key=lambda item: (item[1][0] * item[1][1], tuple(item[1])))
            view = adapter.for_grid(tuple(grid))
            patches = torch.randn(2, grid[0] * grid[1], adapter.patch_values, generator=generator)
            indices, features, _ = method.reference(view, patches, grids["keep"][name], **params)
            image_grid = {"grid": list(grid), "merge": adapter.merge, "kept": indices.numpy()}
            decoder = None if llm else decoder_references(adapter, features.float(), image_grid=image_grid)
        else:
            if buckets:
                vision = bucket_vision_references(adapter, method, params, buckets["sizes"])
            else:
                vision = vision_references(adapter, method, keep, params)
            size = adapter.vision.image_size
            pixels = torch.randn(2, 3, size, size, generator=generator)
            _, features, _ = method.reference(adapter, pixels, keep, **params)
            decoder = None if llm else decoder_references(adapter, features.float())
        if llm:
            from tpc.compiler.verify_llm_precision import llm_references

            staged = llm_references(adapter, llm["plans"], llm["rule"])
    text = adapter.text
    runtime = {
        "num_kv_heads": text.num_kv_heads,
        "head_dim": text.head_dim,
        "num_layers": text.num_layers,
        "feature_dim": adapter.vision.feature_dim,
    }
    references = {"vision": vision, "decoder": decoder, "runtime": runtime, "buckets": buckets}
    if llm:
        references.update(llm=staged, llm_rule=llm["rule"])
    return references


def compare_reduced(graphs, references: dict, thresholds: dict, pieces=None, segments=None) -> dict:
    """The agreement report of ``graphs`` against ``reduced_references``; ParityError below the thresholds.
    ``pieces``: run the decoder layer group by layer group (``compare_decoder``). ``segments``: in-LLM
    pruning's ``(decoder segment files, session options)``, run segment by segment (``compare_llm``)."""
    vision = compare_vision(graphs, references["vision"], references.get("buckets"))
    if thresholds.get("exact_indices"):  # fp16-stored weights, fp32 arithmetic: the kept set must not move
        for r in vision:
            r["passed"] = r["passed"] and r["indices"] == "exact"
    if references.get("llm"):  # the staged decoder: per-stage kept indices, logits
        from tpc.compiler.verify_llm_precision import compare_llm

        runtime = dict(references["runtime"], llm_pruning_rule=references["llm_rule"])
        decoder = compare_llm(graphs, references["llm"], runtime, thresholds, *segments)
        if thresholds.get("exact_indices"):  # fp32 arithmetic: every stage keeps the reference's rows
            for r in decoder["stages"]:
                r["passed"] = r["passed"] and all(k == "exact" for k in r["kept"])
            decoder["passed"] = decoder["passed"] and all(r["passed"] for r in decoder["stages"])
    else:
        decoder = compare_decoder(graphs, references["decoder"], references["runtime"], pieces)
        decoder["passed"] = (
            decoder["logit_cosine_min"] >= thresholds["min_logit_cosine"]
            and decoder["token_agreement"] >= thresholds["min_token_agreement"]
        )
    report = {
        "mode": "agreement with fp32",
        "vision": vision,
        "decoder": decoder,
        "thresholds": dict(thresholds, min_feature_cosine=MIN_FEATURE_COSINE, near_tie=NEAR_TIE),
    }
    if references.get("buckets"):  # per bucket: every batch's kept indices and features agree
        sizes = references["buckets"]["sizes"]
        report["buckets"] = {str(k): all(r["passed"] for r in vision if r["bucket"] == k) for k in sizes}
    report["passed"] = all(r["passed"] for r in vision) and decoder["passed"]
    if not report["passed"]:
        parts = [
            f"vision{' ' + r['graph'] if 'graph' in r else ''}{' k' + str(r['bucket']) if 'bucket' in r else ''} "
            f"b{r['batch']}: indices {r['indices']} "
            f"(overlap {r['kept_overlap']:.2f}{_exact_note(r, thresholds)}), feature cosine "
            f"{r['feature_cosine_min']:.5f}"
            for r in vision
            if not r["passed"]
        ]
        if not decoder["passed"] and "stages" in decoder:
            from tpc.compiler.verify_llm_precision import llm_failures

            parts += llm_failures(decoder, thresholds)
        elif not decoder["passed"]:
            parts.append(
                f"decoder: logit cosine min {decoder['logit_cosine_min']:.4f} (needs >= "
                f"{thresholds['min_logit_cosine']}), greedy agreement {decoder['token_agreement']:.2f} (needs >= "
                f"{thresholds['min_token_agreement']})"
            )
        raise ParityError("reduced-precision graphs disagree with the fp32 reference: " + "; ".join(parts))
    return report


def _exact_note(result: dict, thresholds: dict) -> str:
    if thresholds.get("exact_indices") and result["indices"] == "near-tie":
        return "; a near-tie flipped: fp16-stored weights must keep the fp32 reference's indices exactly"
    return ""


def verify_reduced(
    graphs, adapter, method, keep: int, params: dict | None, thresholds: dict, grids: dict | None = None
) -> dict:
    """``compare_reduced`` against references computed now (the model and the graphs both in memory)."""
    return compare_reduced(graphs, reduced_references(adapter, method, keep, params, grids), thresholds)


def release_weights(model: torch.nn.Module) -> None:
    """Free a model's weights (moved to the meta device): its structure and config stay readable."""
    import gc

    model.to("meta")
    gc.collect()
