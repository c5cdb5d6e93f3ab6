"""The two sides of ``genai_int4_bench.py``, each in its own long-lived process.

    python benchmarks/genai_workers.py genai GENAI_MODEL_DIR           # in the GenAI virtualenv
    python benchmarks/genai_workers.py tpc ARTIFACT_DIR --threads 2

A worker loads its decoder, answers ``REPLY`` + a JSON line (load time, peak memory), then one
reply line per request line on stdin (``{"ids": [...], "new_tokens": N}``): the generated tokens,
prefill and decode times. ``Worker`` is the benchmark's end of that pipe.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPLY = "@@reply "  # worker answers start with this; anything else a library prints is passed through


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _serve(load, generate) -> None:
    """Load, say so, then answer every request line on stdin with one reply line on stdout."""
    start = time.perf_counter()
    state = load()
    ready = {"load_ms": (time.perf_counter() - start) * 1e3, "load_peak_rss_mb": _peak_rss_mb()}
    print(REPLY + json.dumps(ready), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        result = generate(state, request["ids"], request["new_tokens"])
        print(REPLY + json.dumps({**result, "peak_rss_mb": _peak_rss_mb()}), flush=True)


def genai_worker(model_dir: Path) -> None:
    """GenAI's own loop: ``append_tokens`` (prefill), then ``generate_next_token`` once per new token."""
    import numpy as np
    import onnxruntime_genai as og

    def load():
        return og.Model(str(model_dir))  # intra-op threads: the session options in its genai_config.json

    def generate(model, ids, new_tokens):
        prompt = np.asarray(ids, dtype=np.int32)
        total = len(ids) + new_tokens
        start = time.perf_counter()
        params = og.GeneratorParams(model)
        # min_length = max_length: end-of-sequence is masked until the last token, so every run is as long
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt)  # runs the prompt through the decoder
        generator.generate_next_token()  # picks the first token from those logits
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            generator.generate_next_token()  # one decoder step on the last token, then the greedy pick
        end = time.perf_counter()
        tokens = [int(t) for t in generator.get_sequence(0)[len(ids) :]]
        return {
            "tokens": tokens,
            "prefill_ms": (first - start) * 1e3,
            "decode_ms": (end - first) * 1e3,
            "steps": new_tokens - 1,
        }

    _serve(load, generate)


class _GreedyNoEos:
    """Greedy pick with the end-of-sequence ids masked: what GenAI's min_length does on the other side."""

    def __init__(self, eos_ids):
        self.eos = list(eos_ids)

    def __call__(self, logits):
        if not logits.flags.writeable:
            logits = logits.copy()
        logits[:, self.eos] = float("-inf")
        return logits.argmax(axis=-1).astype("int64")


def tpc_worker(artifact_dir: Path, threads: int) -> None:
    """tpc's own generate loop (what ``tpc profile`` times) on the artifact's embed and decoder graphs."""
    import numpy as np

    from tpc.artifact_layout import DECODER, EMBED
    from tpc.manifest import load_artifact
    from tpc.runtimes.generate import generate as tpc_generate
    from tpc.runtimes.ort import OrtGraphs
    from tpc.runtimes.prompting import PromptBatch

    def load():
        artifact = load_artifact(artifact_dir)
        runtime = artifact.runtime
        paths = {name: artifact.graph_path(name) for name in (EMBED, DECODER)}  # text prompt: no vision graph
        graphs = OrtGraphs(paths, artifact.manifest.get("session", {}), runtime["num_layers"], threads=threads)
        return graphs, runtime, _GreedyNoEos(runtime["eos_token_ids"])

    def generate(state, ids, new_tokens):
        graphs, runtime, sampler = state
        input_ids = np.asarray([ids], dtype=np.int64)
        batch = PromptBatch(input_ids, np.ones_like(input_ids), None, [len(ids)])
        result = tpc_generate(graphs, batch, runtime, new_tokens, sampler=sampler, stop_at_eos=False)
        return {
            "tokens": [int(t) for t in result.token_ids[0]],
            "prefill_ms": result.timings_ms["ttft_ms"],  # embedding + decoder prefill + first pick
            "decode_ms": result.timings_ms["decode_ms"],
            "steps": result.decode_steps,
        }

    _serve(load, generate)


class Worker:
    def __init__(self, name: str, cmd: list[str]):
        self.name = name
        print("+", " ".join(cmd), flush=True)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])
            sys.stdout.write(line)
        raise RuntimeError(f"the {self.name} worker exited with code {self.proc.wait()}")

    def run(self, ids: list[int], new_tokens: int) -> dict:
        self.proc.stdin.write(json.dumps({"ids": ids, "new_tokens": new_tokens}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:  # it already exited
            pass
        self.proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("side", choices=["genai", "tpc"])
    parser.add_argument("path", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.side == "genai":
        genai_worker(args.path)
    else:
        tpc_worker(args.path, args.threads)


if __name__ == "__main__":
    main()
