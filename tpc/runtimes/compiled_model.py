"""A loaded artifact: prompt encoding plus the runtime that executes its graphs.

Loading an ONNX Runtime artifact imports neither torch, transformers nor ``tpc.compiler``:
the graph names come from ``tpc.artifact_layout`` and the processor is read by
``tpc.runtimes.light_processor`` (transformers only as a fallback for files it does not
handle). ``tests/test_cli_start.py`` checks this in a fresh interpreter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from tpc.artifact_layout import PROCESSOR_DIR
from tpc.errors import ArtifactError, UsageError
from tpc.manifest import Artifact, load_artifact
from tpc.profiling.timer import StageTimer
from tpc.runtimes.generate import Generation, check_pictures, generate
from tpc.runtimes.image_layout import kept_per_picture, per_sample, split_rows
from tpc.runtimes.layouts import image_layout
from tpc.runtimes.prompting import PromptEncoder, check_prompts
from tpc.runtimes.sampling import Sampler

__all__ = ["PROCESSOR_DIR", "CompiledModel"]


class CompiledModel:
    """``CompiledModel.load(path).generate(prompts, images)``: the Python API of ``tpc run``."""

    def __init__(self, artifact: Artifact, graphs, encoder: PromptEncoder):
        self.artifact = artifact
        self.graphs = graphs
        self.encoder = encoder
        # the bucket dispatcher of a bucketed artifact; None for a fixed-K artifact
        self.bucketed = None
        self._generate_runtime: dict | None = None
        self.layout = image_layout(artifact.runtime, artifact.root)
        if artifact.manifest.get("buckets"):
            from tpc.runtimes.buckets import BucketedVision

            self.bucketed = BucketedVision(graphs, artifact.manifest["buckets"], artifact.runtime)

    @classmethod
    def load(
        cls,
        path: str | Path,
        provider: str = "cpu",
        threads: int | None = None,
        check_hashes: bool = True,
        runtime: str = "auto",
    ) -> CompiledModel:
        """``runtime``: ``auto`` (TensorRT engines when the artifact has them, else ONNX
        Runtime), ``ort``, or ``trt``."""
        artifact = load_artifact(path, check_hashes=check_hashes)
        if runtime not in ("auto", "ort", "trt"):
            raise UsageError(f"unknown runtime {runtime!r}; choose auto, ort or trt")
        use_trt = runtime == "trt" or (runtime == "auto" and artifact.target == "trt")
        if use_trt:
            if artifact.target != "trt":
                raise UsageError(f"{path}: compiled for {artifact.target!r}; TensorRT needs --target trt")
            if not artifact.manifest.get("engines"):
                raise ArtifactError(
                    f"{path}: TensorRT engines are not built; run `tpc build {path}` on the target "
                    "GPU, or pass --runtime ort to run the ONNX graphs with ONNX Runtime"
                )
            from tpc.runtimes.trt import TrtGraphs

            graphs = TrtGraphs(artifact)
        else:
            from tpc.runtimes.ort import OrtGraphs

            graphs = OrtGraphs.from_artifact(artifact, provider=provider, threads=threads)
        encoder = PromptEncoder.from_dir(artifact.root / PROCESSOR_DIR, artifact.runtime)
        return cls(artifact, graphs, encoder)

    def set_budget(self, keep: int | None = None, ratio: float | None = None) -> int:
        """Pick the compiled bucket for ``--keep`` / ``--ratio`` (bucketed artifacts only)."""
        if self.bucketed is None:
            if keep is not None or ratio is not None:
                raise UsageError(
                    f"{self.artifact.root}: compiled for {self.runtime['keep']} visual tokens; "
                    "--keep/--ratio at run time need an artifact compiled with --buckets"
                )
            return self.runtime["keep"]
        return self.bucketed.request(keep, ratio, self.runtime["num_patches"])

    @property
    def runtime(self) -> dict:
        return self.artifact.runtime

    @property
    def generate_runtime(self) -> dict:
        """The manifest's runtime section plus the arrays the generate loop reads from the artifact's files."""
        if self._generate_runtime is None:
            runtime = dict(self.runtime)
            row = runtime.get("files", {}).get("image_token_embedding")
            if row:
                runtime["image_token_row"] = np.load(self.artifact.root / row)
            self._generate_runtime = runtime
        return self._generate_runtime

    def generate(
        self,
        prompts: Sequence[str],
        images: Sequence[object] | None = None,
        max_new_tokens: int = 32,
        sampler: Sampler | None = None,
        timer: StageTimer | None = None,
        stop_at_eos: bool = True,
        on_token: Callable[[int, int], bool] | None = None,
    ) -> Generation:
        """``on_token(row, token_id)``: called for each token as it is produced; True stops that row."""
        if max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        if isinstance(prompts, str):  # one prompt (and its image) without the lists
            prompts = [prompts]
            if images is not None and not isinstance(images, (list, tuple)):
                images = [images]
        prompts = list(prompts)
        if not prompts:
            raise UsageError("no prompt given; pass at least one")
        check_prompts(prompts)
        timer = timer or StageTimer()
        with timer.stage("preprocess_ms"):
            pictures = self.encoder.pictures(images, len(prompts))
            check_pictures(self.runtime, [len(p) for p in pictures or []])
            crops = self.encoder.crops(pictures, len(prompts), self.layout)
        rows = vision = kept = None
        if crops is not None:
            with timer.stage("vision_ms"):  # crops are the vision graph's batch axis
                if hasattr(self.layout, "run"):  # one vision graph per compiled grid
                    features, kept, counts = self.layout.run(self.graphs, crops)
                elif self.bucketed is not None:
                    features, kept, counts = self.bucketed(crops.pixel_values)
                else:
                    features, kept = self.graphs.vision(crops.pixel_values)
                    counts = [int(features.shape[1])] * len(crops.pixel_values)
                assembled = self.layout.assemble(crops, features, kept, counts)
                rows = split_rows([len(p) for p in pictures], assembled.counts)
                vision = per_sample(assembled.features, rows), per_sample(assembled.kept, rows, fill=-1)
        with timer.stage("preprocess_ms"):
            batch = self.encoder.tokens(prompts, rows, max_new_tokens=max_new_tokens)
            if self.runtime.get("position_dims", 1) == 3:  # M-RoPE: each picture's grid and kept tokens
                grids = iter([p.grid for p in crops.pictures] if crops is not None else [])
                batch.image_grids = [[next(grids) for _ in sample] for sample in rows or [[] for _ in prompts]]
                batch.image_kept = None if crops is None else kept_per_picture(assembled.kept, rows)
        result = generate(
            self.graphs, batch, self.generate_runtime, max_new_tokens, sampler, timer, stop_at_eos, vision, on_token
        )
        result.image_tokens = None if rows is None else [sum(r) for r in rows]
        result.picture_tokens = rows
        result.crops_per_image = crops.per_image if crops is not None else None
        if getattr(crops, "pictures", None):
            result.pictures = [dict(vars(p)) for p in crops.pictures]
        result.text = [self.decode(ids) for ids in result.token_ids]
        return result

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.encoder.decode(token_ids)
