"""A loaded artifact: prompt encoding plus the runtime that executes its graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tpc.errors import ArtifactError, UsageError
from tpc.manifest import Artifact, load_artifact
from tpc.profiling.timer import StageTimer
from tpc.runtimes.generate import Generation, generate
from tpc.runtimes.prompting import PromptEncoder
from tpc.runtimes.sampling import Sampler

PROCESSOR_DIR = "processor"


class CompiledModel:
    """``CompiledModel.load(path).generate(prompts, images)``: the Python API of ``tpc run``."""

    def __init__(self, artifact: Artifact, graphs, encoder: PromptEncoder):
        self.artifact = artifact
        self.graphs = graphs
        self.encoder = encoder

    @classmethod
    def load(cls, path: str | Path, provider: str = "cpu", threads: int | None = None,
             check_hashes: bool = True, runtime: str = "auto") -> "CompiledModel":
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
                raise ArtifactError(f"{path}: TensorRT engines are not built; run `tpc build {path}` on the target "
                                    "GPU, or pass --runtime ort to run the ONNX graphs with ONNX Runtime")
            from tpc.runtimes.trt import TrtGraphs

            graphs = TrtGraphs(artifact)
        else:
            from tpc.runtimes.ort import OrtGraphs

            graphs = OrtGraphs.from_artifact(artifact, provider=provider, threads=threads)
        encoder = PromptEncoder.from_dir(artifact.root / PROCESSOR_DIR, artifact.runtime)
        return cls(artifact, graphs, encoder)

    @property
    def runtime(self) -> dict:
        return self.artifact.runtime

    def generate(
        self,
        prompts: Sequence[str],
        images: Sequence[object] | None = None,
        max_new_tokens: int = 32,
        sampler: Sampler | None = None,
        timer: StageTimer | None = None,
        stop_at_eos: bool = True,
    ) -> Generation:
        if max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
        timer = timer or StageTimer()
        with timer.stage("preprocess_ms"):
            batch = self.encoder(list(prompts), images, max_new_tokens=max_new_tokens)
        return generate(self.graphs, batch, self.runtime, max_new_tokens, sampler, timer, stop_at_eos)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.encoder.tokenizer.decode(list(token_ids), skip_special_tokens=True)
