"""The scheduler with a scripted model: which requests share a batch, the queue bound, cancels, failures."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from tpc.errors import UsageError
from tpc.runtimes.sampling import Sampler
from tpc.serving.batching import RowSampler, batch_sampler
from tpc.serving.chat_request import ChatRequest
from tpc.serving.errors import ApiError
from tpc.serving.metrics import ServerMetrics
from tpc.serving.scheduler import Job, Scheduler
from tpc.serving.settings import ServeSettings

EOS = 2


class ScriptedModel:
    """Generates ``100 + row``, ``101 + row``... (EOS never); records each batch; can wait on a gate."""

    def __init__(self, llm_pruning: bool = False):
        self.runtime = {"eos_token_ids": [EOS], "llm_pruning": {"stages": []} if llm_pruning else None}
        self.bucketed = None
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.steps = 0
        self.fail_on: str | None = None  # a prompt that makes the batch raise UsageError
        self.crash_on: str | None = None  # a prompt that makes the batch raise RuntimeError
        self.encoder = self

    def encode(self, prompt: str, image_tokens=None) -> list[int]:
        """``image_tokens``: each picture's rows (PromptEncoder.encode's form)."""
        return [1] * (len(prompt.split()) + sum(image_tokens or []))

    def decode(self, ids) -> str:
        return " ".join(map(str, ids))

    def generate(self, prompts, images, max_new_tokens, sampler, on_token):
        self.batches.append(list(prompts))
        self.entered.set()
        assert self.gate.wait(30)
        if self.crash_on in prompts:
            raise RuntimeError("the runtime broke")
        if self.fail_on in prompts:
            raise UsageError("the prompt is longer than the model's context")
        tokens = [[] for _ in prompts]
        done = [False] * len(prompts)
        for step in range(max_new_tokens):
            self.steps += 1
            for row in range(len(prompts)):
                if not done[row]:
                    tokens[row].append(100 + row + step)
                    done[row] = on_token(row, 100 + row + step)
            if all(done):
                break

        class Result:
            token_ids = tokens
            image_tokens = [64] * len(prompts) if images is not None else None
            picture_tokens = [[64] for _ in prompts] if images is not None else None

        return Result()


def request(prompt: str = "hi", max_tokens: int = 4, temperature: float = 0.0, seed: int = 0) -> ChatRequest:
    return ChatRequest("m", prompt, [], max_tokens, temperature, 1.0, seed, False, False, None, None)


async def outcome(job: Job) -> tuple[str, object]:
    return await asyncio.wait_for(job.events.get(), 30)


def scheduler(model, **settings) -> Scheduler:
    settings = ServeSettings(model_name="m", **{"batch_window_ms": 0.0, **settings})
    return Scheduler(model, settings, ServerMetrics(settings.max_batch))


def test_compatible_requests_share_a_batch_up_to_max_batch():
    async def main():
        model = ScriptedModel()
        model.gate.clear()
        sched = scheduler(model, max_batch=3)
        sched.start()
        loop = asyncio.get_running_loop()
        first = Job(request("first"), None, None, loop)
        sched.submit(first)
        await asyncio.to_thread(model.entered.wait, 30)
        jobs = [
            Job(request(f"p{i}", max_tokens=2 + i, temperature=0.5 * (i % 2), seed=i), None, None, loop)
            for i in range(4)
        ]
        for job in jobs:
            sched.submit(job)
        with_image = Job(request("picture"), object(), None, loop)
        other_bucket = Job(request("bucket 32"), None, 32, loop)
        sched.submit(with_image)
        sched.submit(other_bucket)
        model.gate.set()
        results = [await outcome(job) for job in [first, *jobs, with_image, other_bucket]]
        sched.close()
        return model, results

    model, results = asyncio.run(main())
    assert model.batches == [["first"], ["p0", "p1", "p2"], ["p3"], ["picture"], ["bucket 32"]]
    kinds = [kind for kind, _ in results]
    assert kinds == ["done"] * 7
    p0, p1, p2 = (value for _, value in results[1:4])
    assert [len(c.token_ids) for c in (p0, p1, p2)] == [2, 3, 4]  # each row stops at its own max_tokens
    assert (p0.batch_size, p0.finish_reason, p0.token_ids) == (3, "length", [100, 101])
    assert results[5][1].image_tokens == 64 and results[1][1].image_tokens is None


def test_sampled_requests_run_alone_when_the_model_prunes_inside_the_llm():
    async def main():
        model = ScriptedModel(llm_pruning=True)
        model.gate.clear()
        sched = scheduler(model, max_batch=8)
        sched.start()
        loop = asyncio.get_running_loop()
        sched.submit(Job(request("hold"), None, None, loop))
        await asyncio.to_thread(model.entered.wait, 30)
        jobs = [
            Job(request("g1"), None, None, loop),
            Job(request("s1", temperature=0.7, seed=1), None, None, loop),
            Job(request("g2"), None, None, loop),
            Job(request("s2", temperature=0.7, seed=1), None, None, loop),
        ]
        for job in jobs:
            sched.submit(job)
        model.gate.set()
        for job in jobs:
            await outcome(job)
        sched.close()
        return model

    assert asyncio.run(main()).batches == [["hold"], ["g1", "g2"], ["s1"], ["s2"]]


def test_a_full_queue_refuses_and_a_cancelled_request_frees_its_place():
    async def main():
        model = ScriptedModel()
        model.gate.clear()
        sched = scheduler(model, max_batch=1, queue_size=2)
        sched.start()
        loop = asyncio.get_running_loop()
        running = Job(request("running"), None, None, loop)
        sched.submit(running)
        await asyncio.to_thread(model.entered.wait, 30)
        waiting = [Job(request(f"w{i}"), None, None, loop) for i in range(2)]
        for job in waiting:
            sched.submit(job)
        with pytest.raises(ApiError) as refused:
            sched.submit(Job(request("one too many"), None, None, loop))
        sched.cancel(waiting[0])
        late = Job(request("late"), None, None, loop)
        sched.submit(late)  # the cancelled request's place
        model.gate.set()
        results = [await outcome(job) for job in (running, waiting[1], late)]
        sched.close()
        return refused.value, model, results, sched.metrics

    refused, model, results, metrics = asyncio.run(main())
    assert refused.status == 429 and refused.code == "queue_full"
    assert model.batches == [["running"], ["w1"], ["late"]]
    assert [kind for kind, _ in results] == ["done"] * 3
    assert metrics.registry.get_sample_value("tpc_queue_depth") == 0


def test_a_cancelled_running_request_stops_at_its_next_token():
    async def main():
        model = ScriptedModel()
        model.gate.clear()
        sched = scheduler(model)
        sched.start()
        job = Job(request("long", max_tokens=1000), None, None, asyncio.get_running_loop())
        sched.submit(job)
        await asyncio.to_thread(model.entered.wait, 30)
        sched.cancel(job)
        model.gate.set()
        follow = Job(request("next", max_tokens=3), None, None, asyncio.get_running_loop())
        sched.submit(follow)
        result = await outcome(follow)
        sched.close()
        return model, job, result

    model, job, (kind, completion) = asyncio.run(main())
    assert model.steps == 1 + 3  # one step for the cancelled row, then the next request
    assert job.events.empty()  # nothing is posted for a cancelled request
    assert kind == "done" and completion.token_ids == [100, 101, 102]


def test_a_refused_request_in_a_batch_does_not_fail_the_others():
    async def main():
        model = ScriptedModel()
        model.gate.clear()
        model.fail_on = "too long"
        sched = scheduler(model, max_batch=4)
        sched.start()
        loop = asyncio.get_running_loop()
        sched.submit(Job(request("hold"), None, None, loop))
        await asyncio.to_thread(model.entered.wait, 30)
        jobs = [Job(request(text), None, None, loop) for text in ("fine", "too long", "also fine")]
        for job in jobs:
            sched.submit(job)
        model.gate.set()
        results = [await outcome(job) for job in jobs]
        sched.close()
        return model, results

    model, results = asyncio.run(main())
    assert model.batches[1:] == [["fine", "too long", "also fine"], ["fine"], ["too long"], ["also fine"]]
    assert [kind for kind, _ in results] == ["done", "error", "done"]
    assert results[1][1].status == 400 and "context" in results[1][1].message


def test_a_runtime_failure_answers_500_and_the_worker_keeps_serving():
    async def main():
        model = ScriptedModel()
        model.crash_on = "boom"
        sched = scheduler(model)
        sched.start()
        loop = asyncio.get_running_loop()
        broken, fine = Job(request("boom"), None, None, loop), Job(request("fine"), None, None, loop)
        sched.submit(broken)
        first = await outcome(broken)
        sched.submit(fine)
        second = await outcome(fine)
        sched.close()
        return first, second

    (kind, error), (after, _) = asyncio.run(main())
    assert kind == "error" and error.status == 500 and error.type == "server_error"
    assert after == "done"


def test_closing_answers_the_waiting_requests_503():
    async def main():
        model = ScriptedModel()
        model.gate.clear()
        sched = scheduler(model, max_batch=1)
        sched.start()
        loop = asyncio.get_running_loop()
        sched.submit(Job(request("hold"), None, None, loop))
        await asyncio.to_thread(model.entered.wait, 30)
        waiting = Job(request("waiting"), None, None, loop)
        sched.submit(waiting)
        closing = asyncio.create_task(asyncio.to_thread(sched.close))
        kind, error = await outcome(waiting)
        model.gate.set()
        await closing
        with pytest.raises(ApiError) as refused:
            sched.submit(Job(request("after"), None, None, loop))
        return kind, error, refused.value

    kind, error, refused = asyncio.run(main())
    assert (kind, error.status, refused.status) == ("error", 503, 503)


def test_row_sampler_draws_each_row_as_a_single_run_would():
    rng = np.random.default_rng(0)
    steps = [rng.normal(size=(3, 50)) for _ in range(6)]
    settings = [(0.0, 1.0, 0), (0.9, 0.8, 3), (1.3, 1.0, 4)]
    alone = []
    for row, (temperature, top_p, seed) in enumerate(settings):
        sampler = Sampler(temperature, top_p, seed)
        alone.append([int(sampler(logits[row : row + 1])[0]) for logits in steps])
    together = RowSampler([Sampler(*s) for s in settings])
    batched = np.array([together(logits) for logits in steps]).T.tolist()
    assert batched == alone
    assert len(set(map(tuple, batched))) == 3
    with pytest.raises(ValueError):
        together(steps[0][:2])


def test_an_all_greedy_batch_uses_one_plain_sampler():
    greedy = [Sampler(), Sampler(seed=5)]
    assert batch_sampler(greedy) is greedy[0]
    assert isinstance(batch_sampler([Sampler(), Sampler(temperature=0.5)]), RowSampler)
