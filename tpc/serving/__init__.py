"""Serving a compiled artifact over HTTP: an OpenAI-compatible API (``tpc serve``) and its load tester.

* ``app``: the FastAPI application (``/v1/chat/completions``, ``/v1/models``, ``/health``, ``/metrics``);
* ``scheduler``: one worker thread runs the model, batching compatible requests from a bounded queue;
* ``chat_request``, ``images``, ``responses``: the OpenAI request and response shapes;
* ``batching``: which requests share a generate call; ``metrics``: Prometheus metrics;
* ``background``: uvicorn in the foreground (``tpc serve``) or in a thread (tests);
* ``loadtest``: the client side of ``tpc loadtest``;
* ``triton_*``: the Triton Inference Server path (``tpc export-triton``, ``tpc serve --triton``).

FastAPI, uvicorn and prometheus_client come with the ``serve`` extra and are imported only here.
"""
