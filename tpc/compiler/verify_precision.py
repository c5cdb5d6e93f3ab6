"""Agreement of a reduced-precision artifact (fp16 graphs, int4/int8 decoder weights) with fp32.

The reference is the same checkpoint computing in fp32 (``tpc.models.upcast``: upcast block
by block, no second copy of the weights). Checked, with thresholds recorded in the manifest:

* vision, batch 1 and 2: kept indices equal the fp32 reference's, or differ only among
  tokens whose fp32 scores lie within the precision's rounding of the k-th score
  ("near-tie"); the projected features' cosine;
* decoder, over a fixed set of prompts (random token ids with an image block carrying the
  reference's features; batch 2, left-padded): the logit cosine of prefill and of every
  decode step, and greedy-token agreement, both runs fed the reference's greedy token at each
  step so that one flip does not decide every later step.
"""

from __future__ import annotations

import numpy as np
import torch

from tpc.errors import ParityError

NEAR_TIE = 1e-2  # relative distance to the k-th score within which half precision may reorder
MIN_FEATURE_COSINE = 0.999
PROMPTS = 4
STEPS = 6


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of the last axis."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def index_verdict(got: np.ndarray, want: np.ndarray, scores: np.ndarray | None) -> tuple[str, float]:
    """('exact' | 'near-tie' | 'mismatch', mean overlap of the kept sets)."""
    overlap = float(np.mean([len(np.intersect1d(g, w)) / max(len(w), 1) for g, w in zip(got, want, strict=True)]))
    if np.array_equal(got, want):
        return "exact", overlap
    if scores is None or got.shape != want.shape:
        return "mismatch", overlap
    for g, w, row in zip(got, want, scores, strict=True):
        kth = np.sort(row)[::-1][len(w) - 1]
        differing = np.setxor1d(g, w)
        if np.any(np.abs(row[differing] - kth) > NEAR_TIE * abs(kth)):
            return "mismatch", overlap
    return "near-tie", overlap


@torch.no_grad()
def verify_reduced_vision(graphs, adapter, method, keep: int, params: dict, seed: int = 0) -> list[dict]:
    size = adapter.vision.image_size
    generator = torch.Generator().manual_seed(seed)
    results = []
    for batch in (1, 2):
        pixels = torch.randn(batch, 3, size, size, generator=generator)
        features, kept = graphs.vision(pixels.numpy())
        indices, ref_features, scores = method.reference(adapter, pixels, keep, **params)
        verdict, overlap = index_verdict(kept, indices.numpy(), None if scores is None else scores.float().numpy())
        if verdict == "near-tie" and method.extra.get("gathers"):  # the reference at the graph's own picks
            from tpc.methods.selection import gather_tokens

            patches = adapter.reference_vision(pixels)["patches"]
            ref_features = adapter.project(gather_tokens(patches, torch.from_numpy(kept)))
        elif verdict == "near-tie":  # a swap changes what merged tokens hold: no row-by-row comparison
            ref_features = torch.from_numpy(features.astype(np.float32))
        feature_cosine = float(cosine(features.reshape(-1, features.shape[-1]), _rows(ref_features)).min())
        results.append(
            {
                "batch": batch,
                "indices": verdict,
                "kept_overlap": overlap,
                "feature_cosine_min": feature_cosine,
                "passed": verdict != "mismatch" and feature_cosine >= MIN_FEATURE_COSINE,
            }
        )
    return results


def _rows(features: torch.Tensor) -> np.ndarray:
    array = features.float().numpy()
    return array.reshape(-1, array.shape[-1])


@torch.no_grad()
def verify_reduced_decoder(graphs, adapter, features: torch.Tensor, seed: int = 7) -> dict:
    """Logit cosine and greedy agreement over ``PROMPTS`` prompts of ``STEPS`` + 1 tokens each."""
    from transformers import DynamicCache

    from tpc.models.decoder_common import cache_kwargs
    from tpc.runtimes.decoders import FlatDecoder

    text, model = adapter.text, adapter.model
    lm = model.model.language_model
    rng = np.random.default_rng(seed)
    keep = features.shape[1]
    cosines, agree, total = [], 0, 0
    runtime = {"num_kv_heads": text.num_kv_heads, "head_dim": text.head_dim, "num_layers": text.num_layers}
    for prompt in range(PROMPTS // 2):  # batch 2 per call: the second sample left-padded
        length = keep + 8 + 3 * prompt
        ids = rng.integers(1, min(text.vocab_size, 1000), size=(2, length)).astype(np.int64)
        ids[ids == text.image_token_id] = 1
        ids[:, 2 : 2 + keep] = text.image_token_id
        mask = np.ones((2, length), dtype=np.int64)
        mask[1, :3] = 0
        image = features[:2] if features.shape[0] >= 2 else features.expand(2, -1, -1)
        embeds = graphs.embed(ids, image.float().numpy())
        ref_embeds = adapter.embedding_step()(torch.from_numpy(ids), image.float().to(_dtype(model)))
        positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        decoder = FlatDecoder(graphs, runtime)
        cache = DynamicCache(config=model.config.text_config)
        ref_mask, ref_pos, ref_in = torch.from_numpy(mask), torch.from_numpy(positions), ref_embeds.float()
        for step in range(STEPS + 1):
            out = lm(
                inputs_embeds=ref_in,
                attention_mask=ref_mask,
                position_ids=ref_pos,
                use_cache=True,
                **cache_kwargs(lm, cache),
            )
            expected = model.lm_head(out.last_hidden_state[:, -1]).float().numpy()
            got = decoder.prefill(embeds, mask, positions) if step == 0 else decoder.step(embeds)
            cosines += cosine(got, expected).tolist()
            agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
            total += 2
            token = expected.argmax(-1)[:, None].astype(np.int64)  # both continue with the reference's token
            embeds = graphs.embed(token, np.zeros((2, 1, adapter.vision.feature_dim), np.float32))
            ref_in = model.get_input_embeddings()(torch.from_numpy(token)).float()
            ref_mask = torch.cat([ref_mask, torch.ones(2, 1, dtype=torch.int64)], dim=1)
            ref_pos = ref_pos[:, -1:] + 1
    return {
        "prompts": PROMPTS,
        "steps": STEPS + 1,
        "logit_cosine_min": float(min(cosines)),
        "logit_cosine_mean": float(np.mean(cosines)),
        "token_agreement": agree / total,
    }


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


@torch.no_grad()
def verify_reduced(graphs, adapter, method, keep: int, params: dict, buckets, thresholds: dict) -> dict:
    from tpc.models.upcast import fp32_reference

    with fp32_reference(adapter.model):
        vision = verify_reduced_vision(graphs, adapter, method, keep, params or {})
        generator = torch.Generator().manual_seed(11)
        size = adapter.vision.image_size
        pixels = torch.randn(2, 3, size, size, generator=generator)
        _, features, _ = method.reference(adapter, pixels, keep, **(params or {}))
        decoder = verify_reduced_decoder(graphs, adapter, features.float())
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
    report["passed"] = all(r["passed"] for r in vision) and decoder["passed"]
    if not report["passed"]:
        parts = [
            f"vision b{r['batch']}: indices {r['indices']} (overlap {r['kept_overlap']:.2f}), "
            f"feature cosine {r['feature_cosine_min']:.5f}"
            for r in vision
            if not r["passed"]
        ]
        if not decoder["passed"]:
            parts.append(
                f"decoder: logit cosine min {decoder['logit_cosine_min']:.4f} (needs >= "
                f"{thresholds['min_logit_cosine']}), greedy agreement {decoder['token_agreement']:.2f} (needs >= "
                f"{thresholds['min_token_agreement']})"
            )
        raise ParityError("reduced-precision graphs disagree with the fp32 reference: " + "; ".join(parts))
    return report
