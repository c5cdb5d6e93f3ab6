"""ONNX Runtime execution of a compiled artifact's three graphs."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from tpc.artifact_layout import DECODER, EMBED, VISION, kv_names
from tpc.errors import UsageError
from tpc.manifest import Artifact

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def session_options(settings: dict[str, Any]):
    """``onnxruntime.SessionOptions`` from the settings recorded in the manifest."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[settings.get("optimization", "all")])
    options.intra_op_num_threads = int(settings.get("intra_op_num_threads", 0))
    options.inter_op_num_threads = int(settings.get("inter_op_num_threads", 0))
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if not settings.get("allow_spinning", True):
        # Several sessions run back to back per token (decoder segments): idle workers of one
        # session spinning for work would take the cores from the next one.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def shape_list(profiles: list[dict], bound: str) -> str:
    """ORT TensorRT-EP profile string: ``name:1x3x336x336,...``; a name repeats once per profile."""
    return ",".join(
        f"{name}:{'x'.join(str(v) for v in r[bound])}" for profile in profiles for name, r in profile["shapes"].items()
    )


def provider_options(provider: str, plan: dict | None, graph: str, cache_dir: Path | None) -> list:
    """Providers with their options for one graph's session, most preferred first."""
    chain: list = []
    for name in PROVIDERS[provider]:
        if name == "TensorrtExecutionProvider":
            options: dict[str, Any] = {
                "trt_engine_cache_enable": True,
                "trt_timing_cache_enable": True,
                "trt_fp16_enable": bool(plan and plan["precision"] == "fp16"),
                "trt_bf16_enable": bool(plan and plan["precision"] == "bf16"),
            }
            if cache_dir is not None:
                options["trt_engine_cache_path"] = str(cache_dir)
                options["trt_timing_cache_path"] = str(cache_dir)
            if plan is not None:
                profiles = plan["engines"][graph]["profiles"]
                options.update({f"trt_profile_{b}_shapes": shape_list(profiles, b) for b in ("min", "opt", "max")})
            chain.append((name, options))
        elif name == "CUDAExecutionProvider":
            chain.append((name, {"device_id": 0}))
        else:
            chain.append(name)
    return chain


FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OrtGraphs:
    """The vision, embedding and decoder sessions of one artifact."""

    tokens = None  # the embedding graph's table for text ids (token_table.py); runners built otherwise have none

    def __init__(
        self,
        paths: dict[str, Path],
        settings: dict[str, Any],
        num_layers: int,
        provider: str = "cpu",
        threads: int | None = None,
        plan: dict | None = None,
        cache_dir: Path | None = None,
    ):
        import onnxruntime as ort

        if provider not in PROVIDERS:
            raise UsageError(f"unknown provider {provider!r}; choose one of: {', '.join(PROVIDERS)}")
        settings = dict(settings)
        if threads is not None:
            settings["intra_op_num_threads"] = threads
        self.requested_provider = PROVIDERS[provider][0]
        available = set(ort.get_available_providers())
        self.sessions = {}
        from tpc.runtimes.shared_weights import SharedWeights

        self.shared = SharedWeights.of(paths) if provider == "cpu" else None  # one copy for every grid graph
        for name in paths:
            chain = [
                p
                for p in provider_options(provider, plan, name, cache_dir)
                if (p[0] if isinstance(p, tuple) else p) in available
            ] or ["CPUExecutionProvider"]
            # the embedding graph is a row lookup: one thread, so no second pool spins beside the decoder's
            # between the two graphs of every decode step
            options = session_options({**settings, "intra_op_num_threads": 1} if name == EMBED else settings)
            if self.shared is not None:
                self.shared.attach(paths[name], options)
            self.sessions[name] = ort.InferenceSession(str(paths[name]), options, providers=chain)
        decoders = [n for n in self.sessions if n.startswith(DECODER)] or list(self.sessions)
        main = DECODER if DECODER in self.sessions else decoders[0]
        self.provider = self.sessions[main].get_providers()[0]
        self.fell_back = self.provider != self.requested_provider
        if self.fell_back:
            log.warning("requested %s but ONNX Runtime runs on %s", self.requested_provider, self.provider)
        self._past_names = kv_names(num_layers, "past")
        self.tokens = _token_table(paths.get(EMBED))
        self._present_names = kv_names(num_layers, "present")
        # half-precision graphs take half-precision floats: feeds are cast to each input's declared type
        self._casts = {
            name: {i.name: FLOAT_TYPES[i.type] for i in session.get_inputs() if i.type in FLOAT_TYPES}
            for name, session in self.sessions.items()
        }
        # rotary caches of a fused quantized decoder (tpc/passes/onnx_rotary.py): positions it can take
        meta = self.sessions[DECODER].get_modelmeta().custom_metadata_map if DECODER in self.sessions else {}
        self.max_positions = int(meta["tpc.max_positions"]) if "tpc.max_positions" in meta else None
        # decoders driven by FlatDecoder keep their KV cache as OrtValues between steps (see decoder_kv);
        # a runtime without this attribute (TensorRT, Triton BLS) goes through ``decoder`` on numpy arrays
        # (a GQA decoder, tpc/passes/onnx_group_query_attention.py: in buffers it appends to in place)
        fp32 = DECODER in self.sessions and all(t == np.float32 for t in self._casts[DECODER].values())
        on_cpu = fp32 and self.provider == "CPUExecutionProvider"
        self.decoder_kv = None
        if on_cpu and meta.get("tpc.kv_buffer") == "shared":
            from tpc.runtimes.kv_buffers import KVBuffers

            self._kv_buffers = KVBuffers(self.max_positions)
            self._bound = threading.local()
            self.decoder_kv = self._decoder_in_place
        elif on_cpu:
            self.decoder_kv = self._decoder_kv
        if self.decoder_kv is not None:
            session = self.sessions[DECODER]
            self._decoder_outputs = [o.name for o in session.get_outputs()]
            self._logits_shape = session.get_outputs()[0].shape

    @classmethod
    def from_artifact(cls, artifact: Artifact, provider: str = "cpu", threads: int | None = None) -> OrtGraphs:
        paths = {name: artifact.graph_path(name) for name in artifact.manifest["graphs"]}
        plan = artifact.manifest.get("trt_plan")
        if plan is None and provider == "tensorrt":  # profiles matching what tpc would plan for this artifact
            from tpc.compiler.trt_plan import PlanSettings, make_plan

            plan = make_plan(artifact.runtime, {n: p.name for n, p in paths.items()}, PlanSettings())
        cache = None
        if provider == "tensorrt":  # engine cache per artifact, outside the (hashed) artifact directory
            import hashlib

            digest = hashlib.sha256(json.dumps(artifact.manifest["files"], sort_keys=True).encode()).hexdigest()[:16]
            cache = Path.home() / ".cache" / "tpc" / "ort-trt" / digest
            cache.mkdir(parents=True, exist_ok=True)
        try:
            return cls(
                paths,
                artifact.manifest.get("session", {}),
                artifact.runtime["num_layers"],
                provider,
                threads,
                plan,
                cache,
            )
        except Exception as exc:  # e.g. a contrib op's inputs that an older ONNX Runtime does not have
            _refuse_older_onnxruntime(artifact.manifest.get("versions", {}).get("onnxruntime"), exc)
            raise

    def run_graph(self, name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        casts = self._casts[name]
        feeds = {k: v.astype(casts[k]) if k in casts and v.dtype != casts[k] else v for k, v in feeds.items()}
        return self.sessions[name].run(None, feeds)

    def vision(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, kept = self.run_graph(VISION, {"pixel_values": pixel_values})
        return features, kept

    def embed(self, input_ids: np.ndarray, image_features: np.ndarray) -> np.ndarray:
        if self.tokens is not None:  # text ids only (every decode step): rows of the graph's own table
            rows = self.tokens.lookup(np.asarray(input_ids))
            if rows is not None:
                return rows
        (embeds,) = self.run_graph(EMBED, {"input_ids": input_ids, "image_features": image_features})
        return embeds

    def _check_positions(self, position_ids: np.ndarray) -> None:
        """A decoder with rotary caches (``RotaryEmbedding``) holds ``max_positions`` rows: refuse later ones."""
        limit = getattr(self, "max_positions", None)
        if limit is not None and position_ids.size and int(position_ids.max()) >= limit:
            raise UsageError(
                f"position {int(position_ids.max())} is beyond the model's context of {limit} positions; "
                "shorten the prompt or ask for fewer new tokens"
            )

    def decoder(self, embeds, attention_mask, position_ids, past: list[np.ndarray]):
        self._check_positions(position_ids)
        feed = {"inputs_embeds": embeds, "attention_mask": attention_mask, "position_ids": position_ids}
        feed.update(zip(self._past_names, past, strict=True))
        logits, *present = self.run_graph(DECODER, feed)
        return logits.astype(np.float32, copy=False), present

    def _decoder_kv(self, embeds, attention_mask, position_ids, past: list):
        """``decoder`` with the KV cache as OrtValues: ``past`` as the previous call returned it (or numpy
        arrays), ``present`` handed back without a copy into numpy; only the logits become numpy."""
        import onnxruntime as ort

        self._check_positions(position_ids)
        wrap = ort.OrtValue.ortvalue_from_numpy
        feed = {
            "inputs_embeds": wrap(np.ascontiguousarray(embeds, dtype=np.float32)),
            "attention_mask": wrap(np.ascontiguousarray(attention_mask, dtype=np.int64)),
            "position_ids": wrap(np.ascontiguousarray(position_ids, dtype=np.int64)),
        }
        for name, value in zip(self._past_names, past, strict=True):
            feed[name] = wrap(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
        logits, *present = self.sessions[DECODER].run_with_ort_values(self._decoder_outputs, feed)
        return logits.numpy(), present

    def _decoder_in_place(self, embeds, attention_mask, position_ids, past: list):
        """``decoder`` on KV buffers bound as both past and present (``kv_buffers.py``): ONNX Runtime appends
        the step's keys and values in place; ``present`` are views of the buffers' first rows. A call on the
        buffers of the previous call (every decode step) keeps that call's binding of them, and the logits
        are written into one array bound with them (a copy is returned)."""
        self._check_positions(position_ids)
        buffers = self._kv_buffers.for_call(past, embeds.shape[1])
        binding, logits = self._binding_of(buffers)
        binding.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds, dtype=np.float32))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(attention_mask, dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(position_ids, dtype=np.int64))
        if logits is None:  # logits of every position: ONNX Runtime allocates them in the call's shape
            binding.bind_output(self._decoder_outputs[0])
        self.sessions[DECODER].run_with_iobinding(binding)
        logits = logits.copy() if logits is not None else binding.get_outputs()[0].numpy()
        return logits, self._kv_buffers.written(buffers, attention_mask.shape[1])

    def _binding_of(self, buffers: list[np.ndarray]):
        """(IO binding, logits array or None): each buffer bound as its layer's past and present, and the
        ``[B, vocab]`` logits of a last-position decoder bound to one array. One per thread, kept while the
        very same buffers come back (held weakly: a finished generation's buffers are freed)."""
        import weakref

        import onnxruntime as ort

        held = getattr(self._bound, "held", None)
        if held is not None and len(held[0]) == len(buffers):
            if all(ref() is buffer for ref, buffer in zip(held[0], buffers, strict=True)):
                return held[1], held[2]
        binding = self.sessions[DECODER].io_binding()
        logits = None
        if len(self._logits_shape) == 2 and isinstance(self._logits_shape[1], int):
            logits = np.empty((buffers[0].shape[0], self._logits_shape[1]), np.float32)
            binding.bind_ortvalue_output(self._decoder_outputs[0], ort.OrtValue.ortvalue_from_numpy(logits))
        else:
            binding.bind_output(self._decoder_outputs[0])  # first: the logits are output 0 of the binding
        for name, present, buffer in zip(self._past_names, self._present_names, buffers, strict=True):
            value = ort.OrtValue.ortvalue_from_numpy(buffer)  # shares the buffer's memory
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(present, value)
        self._bound.held = ([weakref.ref(b) for b in buffers], binding, logits)
        return binding, logits

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "onnxruntime",
            "provider": self.provider,
            "requested_provider": self.requested_provider,
            "fell_back": self.fell_back,
        }


def _token_table(path: Path | None):
    """The embedding graph's table for text ids (``token_table.py``), when the graph has the plain form."""
    if path is None:
        return None
    from tpc.runtimes.token_table import TokenTable

    try:
        return TokenTable.from_graph(path)
    except (OSError, ValueError) as exc:  # an unreadable or unusual table: the graph runs every call
        log.debug("embedding graph %s: no direct table lookup (%s)", path.name, exc)
        return None


def _refuse_older_onnxruntime(compiled_with: str | None, exc: Exception) -> None:
    """A one-line usage error when the artifact was compiled with a newer ONNX Runtime than this one."""
    import onnxruntime as ort

    def release(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("+")[0].split(".")[:3] if part.isdigit())

    if compiled_with and release(compiled_with) > release(ort.__version__):
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"this artifact was compiled with onnxruntime {compiled_with} and this is {ort.__version__}, which cannot "
            f"load it ({detail}); install onnxruntime>={compiled_with} or compile it here"
        ) from exc


def optimize_offline(source: Path, target: Path, level: str = "extended") -> Path:
    """Run ONNX Runtime's graph optimisations once and save the optimised graph."""
    import onnxruntime as ort

    options = session_options({"optimization": level})
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", target.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # e.g. the disk filled up while writing the weights
        import shutil

        from tpc.errors import ExportError

        free = shutil.disk_usage(target.parent).free / 2**30
        detail = str(exc).strip().splitlines()[0][-200:] if str(exc).strip() else type(exc).__name__
        raise ExportError(
            f"ONNX Runtime could not optimise {source.name} ({free:.1f} GiB free in {target.parent.parent}): {detail}"
        ) from exc
    return target
