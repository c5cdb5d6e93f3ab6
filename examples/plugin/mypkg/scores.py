"""A user-defined token score for tpc: edge energy of the patch grid, weighted by [CLS] attention.

Compile with it (from the repository root):

    PYTHONPATH=examples/plugin tpc compile llava-tiny --method mypkg.scores:edge_energy --ratio 0.9 -o out

or register it for `--method edge-energy` in your package's pyproject.toml:

    [project.entry-points."tpc.methods"]
    edge-energy = "mypkg.scores:edge_energy"
"""

import torch


def edge_energy(patches: torch.Tensor, cls_attention: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patches where the features change most from their neighbours, weighted by [CLS] attention."""
    rows, cols = grid
    x = patches.reshape(-1, rows, cols, patches.shape[-1])
    down = (x[:, 1:] - x[:, :-1]).pow(2).sum(dim=-1)  # [B, rows-1, cols]
    right = (x[:, :, 1:] - x[:, :, :-1]).pow(2).sum(dim=-1)  # [B, rows, cols-1]
    energy = torch.nn.functional.pad(down, (0, 0, 0, 1)) + torch.nn.functional.pad(right, (0, 1, 0, 0))
    return energy.reshape(-1, rows * cols) * (1.0 + cls_attention * rows * cols)
