import numpy as np
import pytest

from tpc.compiler.parity import compare_indices
from tpc.compiler.verify import verify_graphs
from tpc.errors import ParityError
from tpc.methods import METHODS


def test_compare_indices_exact_tie_and_mismatch():
    scores = np.array([[0.5, 0.2, 0.2, 0.1]])
    assert compare_indices(np.array([[0, 1]]), np.array([[0, 1]]), scores) == "exact"
    assert compare_indices(np.array([[0, 2]]), np.array([[0, 1]]), scores) == "tie-equivalent"
    assert compare_indices(np.array([[0, 3]]), np.array([[0, 1]]), scores) == "mismatch"
    assert compare_indices(np.array([[0, 0]]), np.array([[0, 1]]), scores) == "mismatch"


class _Broken:
    """Wraps real graphs but shifts the kept indices by one."""

    def __init__(self, graphs):
        self.graphs = graphs

    def vision(self, pixels):
        features, kept = self.graphs.vision(pixels)
        return features, np.clip(kept + 1, 0, 575)

    def embed(self, *a):
        return self.graphs.embed(*a)

    def decoder(self, *a):
        return self.graphs.decoder(*a)


def test_a_wrong_graph_fails_with_numbers(artifacts, tiny_adapter):
    from tpc.manifest import load_artifact
    from tpc.runtimes.ort import OrtGraphs

    graphs = OrtGraphs.from_artifact(load_artifact(artifacts(0.89, "ort")))
    report = verify_graphs(graphs, tiny_adapter, METHODS.get("fastervlm"), 64)
    assert report["passed"] and all(r["indices"] == "exact" for r in report["vision"])
    with pytest.raises(ParityError, match=r"vision b1: indices mismatch.*decoder logits diff"):
        verify_graphs(_Broken(graphs), tiny_adapter, METHODS.get("fastervlm"), 64)
