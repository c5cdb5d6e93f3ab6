"""The OpenAI-compatible server over real HTTP: answers equal CompiledModel.generate, batching, back-pressure."""

from __future__ import annotations

import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from tests.conftest import ASSETS, run_cli
from tests.serving.conftest import HeldModel, chat, data_url, metric, noise_image, serving, wait_for
from tpc.runtimes.prompting import load_image
from tpc.runtimes.sampling import Sampler

PROMPT = "What is in the picture?"
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def demo():
    return load_image(ASSETS / "demo.png")


@pytest.fixture(scope="module")
def server(bucketed_model):
    with serving(bucketed_model, max_batch=4, queue_size=8, max_image_bytes=2 * 2**20, max_image_pixels=10**6) as url:
        yield url


def post(url: str, body, **kwargs) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"content-type": "application/json"}
    return httpx.post(f"{url}/v1/chat/completions", content=content, headers=headers, timeout=120, **kwargs)


def stream(url: str, body: dict) -> list[dict | str]:
    """The server-sent events of a streamed request: parsed chunks, then the literal [DONE]."""
    events = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=dict(body, stream=True), timeout=120) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def reference(model, image, prompt=PROMPT, max_tokens=12, temperature=0.0, top_p=1.0, seed=0, keep=None):
    model.set_budget(keep=keep if keep is not None else model.runtime["keep"])
    sampler = Sampler(temperature=temperature, top_p=top_p, seed=seed)
    result = model.generate([prompt], [image] if image is not None else None, max_tokens, sampler)
    return result.token_ids[0], result.text[0], result.image_tokens[0] if result.image_tokens else None


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0.8, "top_p": 0.9, "seed": 5}], ids=["greedy", "sampled"])
def test_non_streaming_reply_equals_generate(server, bucketed_model, demo, sampling):
    response = post(server, chat("tiny", PROMPT, data_url(demo), max_tokens=12, **sampling))
    assert response.status_code == 200, response.text
    body = response.json()
    ids, text, visual = reference(bucketed_model, demo, **sampling)
    assert body["object"] == "chat.completion" and body["model"] == "tiny"
    assert body["tpc"]["token_ids"] == ids
    assert body["choices"][0]["message"] == {"role": "assistant", "content": text}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["tpc"]["visual_tokens"] == visual == 64
    prompt_tokens = len(bucketed_model.encoder.encode(PROMPT, [64]))
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 12,
        "total_tokens": prompt_tokens + 12,
    }


def test_two_pictures_in_one_request_equal_generate(server, bucketed_model, demo):
    """Two image_url parts: both pictures in the user turn, in order, as CompiledModel.generate takes them."""
    body = chat("tiny", PROMPT, max_tokens=8) | {"messages": [_two_images(data_url(demo))]}
    response = post(server, body)
    assert response.status_code == 200, response.text
    reply = response.json()
    bucketed_model.set_budget(keep=bucketed_model.runtime["keep"])
    want = bucketed_model.generate([PROMPT], [[demo, demo]], max_new_tokens=8)
    assert reply["tpc"]["token_ids"] == want.token_ids[0]
    assert reply["tpc"]["visual_tokens"] == 128
    assert reply["usage"]["prompt_tokens"] == len(bucketed_model.encoder.encode(PROMPT, [64, 64]))


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.2, "seed": 11}], ids=["greedy", "sampled"])
def test_streamed_reply_equals_generate(server, bucketed_model, demo, sampling):
    body = chat("tiny", PROMPT, data_url(demo), max_tokens=10, stream_options={"include_usage": True}, **sampling)
    events = stream(server, body)
    ids, text, _ = reference(bucketed_model, demo, max_tokens=10, **sampling)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    tokens = [t for c in chunks for t in c.get("tpc", {}).get("token_ids", [])]
    assert tokens == ids
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == text
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10


def test_concurrent_requests_batch_and_each_gets_its_own_answer(bucketed_model, demo):
    """Two requests with different pictures and samplers run in one batch and match their single runs."""
    held = HeldModel(bucketed_model)
    pictures = [noise_image(336, 336, seed=1), noise_image(400, 300, seed=2)]
    samplings = [{}, {"temperature": 0.9, "top_p": 0.95, "seed": 7}]
    with serving(held, max_batch=4, queue_size=8) as url, ThreadPoolExecutor(3) as pool:
        blocker = pool.submit(post, url, chat("tiny", "Hold the worker.", data_url(demo), max_tokens=2))
        assert held.running.wait(60)
        bodies = [
            chat("tiny", text, data_url(p), max_tokens=8, **s)
            for text, p, s in zip(["Describe it.", "What colour dominates?"], pictures, samplings, strict=True)
        ]
        futures = [pool.submit(post, url, body) for body in bodies]
        wait_for(lambda: metric(url, "tpc_queue_depth") == 2, what="two queued requests")
        held.release()
        assert blocker.result().status_code == 200
        answers = [f.result().json() for f in futures]
    assert held.batches == [1, 2]
    for answer, picture, text, sampling in zip(
        answers, pictures, ["Describe it.", "What colour dominates?"], samplings, strict=True
    ):
        ids, reply, _ = reference(bucketed_model, picture, prompt=text, max_tokens=8, **sampling)
        assert answer["tpc"]["batch_size"] == 2
        assert answer["tpc"]["token_ids"] == ids
        assert answer["choices"][0]["message"]["content"] == reply
    assert answers[0]["tpc"]["token_ids"] != answers[1]["tpc"]["token_ids"]


def test_keep_extension_picks_a_bucket_per_request(server, bucketed_model, demo):
    for extension, visual in (({"keep": 32}, 32), ({"keep": 20}, 32), ({"ratio": 0.9}, 64), (None, 64)):
        fields = {"tpc": extension} if extension else {}
        answer = post(server, chat("tiny", PROMPT, data_url(demo), max_tokens=6, **fields)).json()
        ids, _, expected = reference(bucketed_model, demo, max_tokens=6, keep=visual)
        assert (answer["tpc"]["visual_tokens"], answer["tpc"]["token_ids"]) == (expected, ids) == (visual, ids)
    refused = post(server, chat("tiny", PROMPT, data_url(demo), tpc={"keep": 1000}))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "tpc.keep"


def test_models_health_and_metrics(server):
    models = httpx.get(f"{server}/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["tiny"]
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    post(server, chat("tiny", PROMPT, max_tokens=3))  # text only
    page = httpx.get(f"{server}/metrics")
    assert page.headers["content-type"].startswith("text/plain")
    for name in (
        "process_resident_memory_bytes",
        'tpc_requests_total{status="200"}',
        "tpc_queue_depth",
        "tpc_running_requests",
        "tpc_time_to_first_token_seconds_count",
        "tpc_decode_seconds_per_token_count",
        "tpc_visual_tokens_kept_count",
        "tpc_batch_size_count",
    ):
        assert name in page.text, name
    assert metric(server, "process_resident_memory_bytes") > 10 * 2**20
    assert metric(server, "tpc_time_to_first_token_seconds_count") >= 1


def _bad_requests(demo) -> list[tuple[str, object, int, str | None]]:
    """(case, body, HTTP status, error code)."""
    good = data_url(demo)
    text_url = "data:text/plain;base64," + "aGVsbG8="
    not_png = "data:image/png;base64," + "aGVsbG8gd29ybGQ="
    big = data_url(noise_image(900, 900))  # about 2.4 MB of PNG, over the 2 MiB limit
    wide = data_url(Image.new("RGB", (1200, 1000), (200, 30, 30)))  # a few kB, 1.2 M pixels
    return [
        ("malformed json", b'{"model": "tiny", "messages": [', 400, "invalid_json"),
        ("not an object", b"[1, 2]", 400, "invalid_json"),
        ("no model", {"messages": [{"role": "user", "content": "hi"}]}, 400, "missing_required"),
        ("unknown model", chat("gpt-4o", PROMPT), 404, "model_not_found"),
        ("no messages", {"model": "tiny", "messages": []}, 400, "missing_required"),
        ("two turns", {"model": "tiny", "messages": [{"role": "system", "content": "x"}] * 2}, 400, "invalid_value"),
        ("empty text", chat("tiny", "  ", good), 400, "invalid_value"),
        ("text data url", chat("tiny", PROMPT, text_url), 400, "invalid_image"),
        ("undecodable image", chat("tiny", PROMPT, not_png), 400, "invalid_image"),
        ("bad base64", chat("tiny", PROMPT, "data:image/png;base64,@@@"), 400, "invalid_image"),
        ("remote url", chat("tiny", PROMPT, "http://example.com/a.png"), 400, "invalid_image"),
        ("local path not allowed", chat("tiny", PROMPT, str(ASSETS / "demo.png")), 400, "invalid_image"),
        ("image over the byte limit", chat("tiny", PROMPT, big), 413, "image_too_large"),
        ("image over the pixel limit", chat("tiny", PROMPT, wide), 413, "image_too_large"),
        ("prompt over the context", chat("tiny", "describe " * 2100, good), 400, "context_length_exceeded"),
        ("max_tokens 0", chat("tiny", PROMPT, max_tokens=0), 400, "invalid_value"),
        ("max_tokens over the context", chat("tiny", PROMPT, max_tokens=10**6), 400, "invalid_value"),
        ("max_tokens not a number", chat("tiny", PROMPT, max_tokens="ten"), 400, "invalid_value"),
        ("temperature negative", chat("tiny", PROMPT, temperature=-1), 400, "invalid_value"),
        ("top_p 0", chat("tiny", PROMPT, top_p=0), 400, "invalid_value"),
        ("n 2", chat("tiny", PROMPT, n=2), 400, "invalid_value"),
        ("keep not an integer", chat("tiny", PROMPT, tpc={"keep": "all"}), 400, "invalid_value"),
        ("image token in the text", chat("tiny", "<image> what?", good), 400, "invalid_value"),
    ]


def _two_images(url: str) -> dict:
    part = {"type": "image_url", "image_url": {"url": url}}
    return {"role": "user", "content": [part, part, {"type": "text", "text": PROMPT}]}


def test_bad_input_gets_an_openai_error_and_the_server_stays_up(server, bucketed_model, demo):
    cases = _bad_requests(demo)
    for case, body, status, code in cases:
        response = post(server, body)
        assert response.status_code == status, (case, response.text)
        error = response.json()["error"]
        assert set(error) == ERROR_KEYS, case
        assert error["code"] == code, (case, error)
        assert error["message"], case
    assert metric(server, 'tpc_requests_total{status="400"}') >= sum(status == 400 for _, _, status, _ in cases)
    answer = post(server, chat("tiny", PROMPT, data_url(demo), max_tokens=4))
    assert answer.status_code == 200
    assert answer.json()["tpc"]["token_ids"] == reference(bucketed_model, demo, max_tokens=4)[0]


def test_unknown_route_and_method_get_the_error_shape(server):
    missing = httpx.get(f"{server}/v1/completions")
    assert missing.status_code == 404 and set(missing.json()["error"]) == ERROR_KEYS
    wrong = httpx.get(f"{server}/v1/chat/completions")
    assert wrong.status_code == 405 and set(wrong.json()["error"]) == ERROR_KEYS


def test_local_images_only_inside_the_allowed_directory(bucketed_model, demo, tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    demo.save(allowed / "in.png")
    demo.save(outside / "out.png")
    os.symlink(outside / "out.png", allowed / "link.png")
    with serving(bucketed_model, allow_local_dir=allowed) as url:
        inside = post(url, chat("tiny", PROMPT, f"file://{allowed / 'in.png'}", max_tokens=5))
        assert inside.status_code == 200
        assert inside.json()["tpc"]["token_ids"] == reference(bucketed_model, demo, max_tokens=5)[0]
        for path, status in ((outside / "out.png", 403), (allowed / "link.png", 403), (allowed / "no.png", 400)):
            refused = post(url, chat("tiny", PROMPT, str(path)))
            assert refused.status_code == status, path
        assert post(url, chat("tiny", PROMPT, f"{allowed}/../outside/out.png")).status_code == 403


def test_a_full_queue_answers_429(bucketed_model, demo):
    held = HeldModel(bucketed_model)
    with serving(held, max_batch=1, queue_size=1) as url, ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, url, chat("tiny", PROMPT, data_url(demo), max_tokens=3))
        assert held.running.wait(60)
        queued = pool.submit(post, url, chat("tiny", PROMPT, data_url(demo), max_tokens=3))
        wait_for(lambda: metric(url, "tpc_queue_depth") == 1, what="one queued request")
        refused = post(url, chat("tiny", PROMPT, data_url(demo), max_tokens=3))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        held.release()
        assert running.result().status_code == queued.result().status_code == 200


def test_a_request_past_its_timeout_gets_504_and_frees_the_worker(bucketed_model, demo):
    held = HeldModel(bucketed_model)
    with serving(held, timeout_s=1.5) as url:
        late = post(url, chat("tiny", PROMPT, data_url(demo), max_tokens=50))
        assert late.status_code == 504 and late.json()["error"]["type"] == "timeout"
        held.release()
        wait_for(lambda: metric(url, "tpc_running_requests") == 0, what="the worker to stop the late request")
        assert held.tokens < 50  # the timed-out row stopped at its next token
        assert post(url, chat("tiny", PROMPT, max_tokens=3)).status_code == 200


def test_a_stream_past_its_timeout_ends_with_an_error_event(bucketed_model, demo):
    held = HeldModel(bucketed_model, hold_at=2)
    with serving(held, timeout_s=1.5) as url:
        events = stream(url, chat("tiny", PROMPT, data_url(demo), max_tokens=50))
        held.release()
        assert events[0]["tpc"]["token_ids"]  # the first token came before the deadline
        assert events[-2]["error"]["type"] == "timeout" and set(events[-2]["error"]) == ERROR_KEYS
        assert events[-1] == "[DONE]"
        wait_for(lambda: metric(url, "tpc_running_requests") == 0, what="the worker to stop the late request")
        assert held.tokens == 2
        assert metric(url, 'tpc_requests_cancelled_total{reason="timeout"}') == 1


def test_a_client_leaving_mid_stream_frees_its_slot(bucketed_model, demo):
    held = HeldModel(bucketed_model, hold_at=2)
    with serving(held, max_batch=1, queue_size=1) as url:
        body = chat("tiny", PROMPT, data_url(demo), max_tokens=400, stream=True)
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[len("data: ") :])["tpc"]["token_ids"]
        # the connection is closed: the server cancels the request while the model still holds it
        wait_for(lambda: metric(url, 'tpc_requests_cancelled_total{reason="disconnect"}') == 1, what="the cancel")
        held.release()
        wait_for(lambda: metric(url, "tpc_running_requests") == 0, what="the worker to drop the request")
        assert held.tokens < 10
        after = post(url, chat("tiny", PROMPT, data_url(demo), max_tokens=4))
        assert after.status_code == 200
        assert after.json()["tpc"]["token_ids"] == reference(bucketed_model, demo, max_tokens=4)[0]


def test_a_client_leaving_before_a_non_streamed_reply_frees_its_slot(bucketed_model, demo):
    held = HeldModel(bucketed_model)
    with serving(held, max_batch=1, queue_size=1) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=chat("tiny", PROMPT, data_url(demo)), timeout=1.0)
        wait_for(lambda: metric(url, 'tpc_requests_cancelled_total{reason="disconnect"}') == 1, what="the cancel")
        held.release()
        assert post(url, chat("tiny", PROMPT, max_tokens=3)).status_code == 200


def test_a_multi_crop_model_is_served_and_batches_mixed_grids(multicrop_dir):
    """Pictures of different crop grids run in one batch; each answer equals its single run."""
    from tpc.runtimes.compiled_model import CompiledModel

    model = CompiledModel.load(multicrop_dir, threads=1)
    held = HeldModel(model)
    wide, tall = noise_image(300, 700, seed=3), noise_image(700, 300, seed=4)
    with serving(held, max_batch=4, model_name="anyres") as url, ThreadPoolExecutor(3) as pool:
        blocker = pool.submit(post, url, chat("anyres", "Hold.", max_tokens=2))
        assert held.running.wait(60)
        futures = [
            pool.submit(post, url, chat("anyres", PROMPT, data_url(p), max_tokens=6, seed=1)) for p in (wide, tall)
        ]
        wait_for(lambda: metric(url, "tpc_queue_depth") == 2, what="two queued requests")
        held.release()
        assert blocker.result().status_code == 200
        answers = [f.result().json() for f in futures]
    for answer, picture in zip(answers, (wide, tall), strict=True):
        single = model.generate([PROMPT], [picture], 6)
        assert answer["tpc"]["batch_size"] == 2
        assert answer["tpc"]["token_ids"] == single.token_ids[0]
        assert answer["tpc"]["visual_tokens"] == single.image_tokens[0] == 64 * single.crops_per_image[0]
        assert single.crops_per_image[0] > 1


def test_a_grid_family_is_served_and_batches_mixed_grids(qwen_dir):
    """Qwen2.5-VL: pictures of two compiled grids (and one resized to the nearest grid) in one batch; each answer
    equals its single run, with the picture's own kept-token count."""
    from tpc.runtimes.compiled_model import CompiledModel

    model = CompiledModel.load(qwen_dir, threads=1)
    held = HeldModel(model)
    pictures = [noise_image(224, 224, seed=5), noise_image(168, 280, seed=6), noise_image(300, 200, seed=7)]
    with serving(held, max_batch=4, model_name="qwen") as url, ThreadPoolExecutor(4) as pool:
        blocker = pool.submit(post, url, chat("qwen", "Hold.", max_tokens=2))
        assert held.running.wait(60)
        futures = [pool.submit(post, url, chat("qwen", PROMPT, data_url(p), max_tokens=6, seed=1)) for p in pictures]
        wait_for(lambda: metric(url, "tpc_queue_depth") == 3, what="three queued requests")
        held.release()
        assert blocker.result().status_code == 200
        answers = [f.result().json() for f in futures]
    for answer, picture in zip(answers, pictures, strict=True):
        single = model.generate([PROMPT], [picture], 6)
        assert answer["tpc"]["batch_size"] == 3
        assert answer["tpc"]["token_ids"] == single.token_ids[0]
        assert answer["tpc"]["visual_tokens"] == single.image_tokens[0]
    assert [a["tpc"]["visual_tokens"] for a in answers] == [16, 15, 16]


def test_serve_command_errors_are_one_line(bucketed_dir, capsys, tmp_path):
    code, _, err = run_cli(["serve", str(bucketed_dir), "--max-batch", "0"], capsys)
    assert code == 2 and err.strip() == "error: --max-batch must be at least 1, got 0"
    code, _, err = run_cli(["serve", str(bucketed_dir), "--allow-local-dir", str(tmp_path / "none")], capsys)
    assert code == 2 and "--allow-local-dir" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["serve", str(tmp_path / "missing"), "--port", "0"], capsys)
    assert code == 4 and len(err.strip().splitlines()) == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(["serve", str(bucketed_dir), "--port", str(port)], capsys)
    assert code == 2 and err.startswith(f"error: cannot listen on 127.0.0.1:{port}") and "Traceback" not in err
