"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): Qwen2.5-VL's adapter (``tpc.models.qwen2_5_vl``) on
the earlier vision tower.

What differs from Qwen2.5-VL, and why the same cut serves both:

* **no window attention**: every ViT block attends over all patches and Hugging Face runs the tower in
  the processor's order (no window permutation). The exported boundary already treats a config without
  ``fullatt_block_indexes`` as all full-attention; the references skip the window permutation
  (``window_order`` False).
* **naming**: the ViT width is the vision config's ``embed_dim`` and its ``hidden_size`` is the merged
  tokens' width (the LLM's); Qwen2.5-VL calls them ``hidden_size`` and ``out_hidden_size``.
* LayerNorm (not RMSNorm) in the blocks and the merger's ``ln_q``, an fc1/fc2 quick_gelu MLP: the
  boundary calls the checkpoint's own modules, so nothing changes there. The rotary ``inv_freq``, the
  2-D position ids, ``get_rope_index`` (3-D M-RoPE of still images) and the Qwen2 decoder are the same.

Pruning is the same as Qwen2.5-VL's (METHODS.md): after the 2x2 merger, by the attention a merged token
receives in the last ViT block.
"""

from __future__ import annotations

from tpc.models.qwen2_5_vl import QwenVLAdapter


class Qwen2VLAdapter(QwenVLAdapter):
    """Knows where Qwen2-VL's visual tokens are, per compiled grid, and how to cut the model."""

    family = "qwen2_vl"
    title = "Qwen2-VL"
    window_order = False  # Hugging Face's tower keeps the processor's order

    def vision_widths(self) -> tuple[int, int]:
        """(ViT width, merged-token width): Qwen2-VL's vision ``embed_dim`` and ``hidden_size``."""
        vc = self.model.config.vision_config
        return vc.embed_dim, vc.hidden_size
