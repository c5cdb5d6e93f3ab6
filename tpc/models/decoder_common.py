"""Mask and cache helpers every exported decoder (flat or segmented, any family) shares."""

from __future__ import annotations

import torch
from torch import nn


def cache_kwargs(module: nn.Module, cache) -> dict:
    """The keyword a transformers layer/model takes its cache by (``cache`` from 5.24, before
    that ``past_key_values``)."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def causal_padding_mask(attention_mask: torch.Tensor, query_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4-D mask [B,1,S,P+S]: key j visible to query i iff j <= P+i and not padding."""
    total = attention_mask.shape[1]
    past = total - query_len
    q_pos = torch.arange(query_len, device=attention_mask.device) + past
    k_pos = torch.arange(total, device=attention_mask.device)
    visible = (k_pos[None, :] <= q_pos[:, None])[None, None] & attention_mask[:, None, None, :].bool()
    return torch.where(visible, 0.0, torch.finfo(dtype).min).to(dtype)


IMAGE_TOKEN_ROW_FILE = "image_token_embedding.npy"


def write_image_token_row(model, image_token_id: int, out) -> dict[str, str]:
    """The image token's own embedding row [hidden] (fp32), saved for decode steps: a GENERATED image token is
    text to the model (Hugging Face embeds it with the table), while the embedding graph puts image features
    on every image-token row; the runtime feeds this row as that token's "feature"."""
    from pathlib import Path

    import numpy as np

    row = model.get_input_embeddings().weight[image_token_id].detach().float().cpu().numpy()
    np.save(Path(out) / IMAGE_TOKEN_ROW_FILE, row.astype(np.float32))
    return {"image_token_embedding": IMAGE_TOKEN_ROW_FILE}
