"""Hugging Face PyTorch baselines for BENCHMARKS.md, timed with tpc's own stage timer.

(a) ``hf``: transformers in eager PyTorch with SDPA, unpruned.
(b) ``hf-fastervlm``: FasterVLM the way research code runs it: the vision tower in
    eager attention with every layer (the last one included) so that the feature
    layer's attention weights can be read from a hook, top-k, gather, projector, then
    the LLM on the pruned sequence.

    python benchmarks/hf_baselines.py --mode hf --model llava-bench --runs 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from tpc.methods.budget import keep_count
from tpc.methods.selection import reference_topk_ascending
from tpc.models import load_model
from tpc.models.decoder_common import cache_kwargs
from tpc.profiling.profiler import peak_memory_mb, synthetic_image, synthetic_prompt
from tpc.profiling.stats import summarize
from tpc.profiling.timer import StageTimer
from tpc.runtimes.prompting import PromptEncoder


class Baseline:
    def __init__(self, model_name: str, mode: str, ratio: float):
        loaded = load_model(model_name)
        self.model, self.processor = loaded.model, loaded.processor
        self.mode = mode
        config = self.model.config
        vc = config.vision_config
        self.num_patches = (vc.image_size // vc.patch_size) ** 2
        self.keep = keep_count(self.num_patches, ratio if mode == "hf-fastervlm" else 0.0)
        self.feature_index = config.vision_feature_layer % (vc.num_hidden_layers + 1)
        tc = config.text_config
        self.encoder = PromptEncoder(
            self.processor,
            config.image_token_id,
            self.keep,
            tc.max_position_embeddings,
            tc.pad_token_id if tc.pad_token_id is not None else 0,
        )
        self._captured = None
        if mode == "hf-fastervlm":
            tower = self.model.model.vision_tower
            tower.config._attn_implementation = "eager"
            layer = tower.encoder.layers[self.feature_index - 1]
            layer.self_attn.register_forward_hook(self._capture)

    def _capture(self, module, args, output):
        self._captured = output[1]  # eager attention returns (output, weights [B,H,T,T])

    @torch.no_grad()
    def vision(self, pixel_values: torch.Tensor) -> torch.Tensor:
        m = self.model.model
        if self.mode == "hf":
            return torch.cat(m.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output)
        out = m.vision_tower(pixel_values, output_hidden_states=True, return_dict=True)
        scores = self._captured[:, :, 0, 1:].mean(dim=1)
        kept = reference_topk_ascending(scores, self.keep)
        patches = out.hidden_states[self.feature_index][:, 1:]
        index = kept.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
        return m.multi_modal_projector(torch.gather(patches, 1, index)).flatten(0, 1)

    @torch.no_grad()
    def run(self, prompt: str, image, new_tokens: int) -> dict:
        timer = StageTimer()
        with timer.stage("preprocess_ms"):
            batch = self.encoder([prompt], [image], max_new_tokens=new_tokens)
            pixels = torch.from_numpy(batch.pixel_values)
            ids = torch.from_numpy(batch.input_ids)
            mask = torch.from_numpy(batch.attention_mask)
        with timer.stage("vision_ms"):
            features = self.vision(pixels)
        cache = DynamicCache(config=self.model.config.text_config)
        with timer.stage("prefill_ms"):
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                use_cache=True,
                **cache_kwargs(self.model, cache),
                mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=[features])},
                logits_to_keep=1,
            )
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        with timer.stage("decode_ms"):
            for _ in range(new_tokens - 1):
                mask = torch.cat([mask, torch.ones_like(token)], dim=1)
                out = self.model(
                    input_ids=token,
                    attention_mask=mask,
                    use_cache=True,
                    **cache_kwargs(self.model, cache),
                    logits_to_keep=1,
                )
                token = out.logits[:, -1].argmax(-1, keepdim=True)
        t = timer.ms
        t["ttft_ms"] = t["preprocess_ms"] + t["vision_ms"] + t["prefill_ms"]
        t["decode_tokens_per_s"] = 1e3 * (new_tokens - 1) / t["decode_ms"] if new_tokens > 1 else 0.0
        return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["hf", "hf-fastervlm"], required=True)
    parser.add_argument("--model", default="llava-bench")
    parser.add_argument("--ratio", type=float, default=0.889)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    baseline = Baseline(args.model, args.mode, args.ratio)
    prompt = synthetic_prompt(baseline.encoder.tokenizer, args.prompt_tokens)
    image = synthetic_image(baseline.model.config.vision_config.image_size, 0)
    samples: dict[str, list[float]] = {}
    for index in range(args.warmup + args.runs):
        start = time.perf_counter()
        timings = baseline.run(prompt, image, args.new_tokens)
        timings["e2e_ms"] = (time.perf_counter() - start) * 1e3
        if index >= args.warmup:
            for key, value in timings.items():
                samples.setdefault(key, []).append(value)
    report = {
        "mode": args.mode,
        "model": args.model,
        "keep": baseline.keep,
        "runs": args.runs,
        "threads": torch.get_num_threads(),
        "metrics": {k: summarize(v) for k, v in samples.items()},
        "peak_memory_mb": peak_memory_mb(),
    }
    with open(args.json, "w") as handle:
        json.dump(report, handle, indent=2)
    print(json.dumps({k: round(float(np.median(v)), 1) for k, v in samples.items()}))


if __name__ == "__main__":
    main()
