"""A local simulator of the AI/ML API gateway (OpenAI-shaped chat completions), aiohttp.web.

Users rehearse jobs with it offline; the demo, the end-to-end tests and the benchmarks run
against it. It answers like the documented API: ``POST /v1/chat/completions`` with a bearer
key, 400 with a JSON error naming the field on a bad request, **201** with a deterministic
completion and usage derived from the prompt, SSE (200, ``text/event-stream``) when
``stream`` is true; a share of answers (``reasoning_rate``) carry ``reasoning_content``,
streamed as ``delta.reasoning_content`` before the content. Faults are drawn from one
seeded RNG so runs repeat.

Simulator-only endpoints: ``GET /_sim/stats`` (counters as JSON) and ``POST /_sim/reset``.

One idea a module::

    config.py    SimConfig (what it is told), SimStats (what it counts), MODELS
    validate.py  request validation as the real API does it
    answers.py   the deterministic answer to a body (text, usage, tool call, reasoning)
    graded.py    the answer key: expected answers from an eval file, a share of them given
    wire.py      an answer or error as JSON, a streamed answer as SSE events
    faults.py    the requests-per-minute window and the injected faults (one seeded RNG)
    server.py    handlers, routes (registered in one place), make_app / start_simulator / serve
"""

from __future__ import annotations

from batchrun.simulate.answers import Answer, answer_for, completion_for, reasoning_for, usage_for
from batchrun.simulate.config import MODELS, SimConfig, SimStats
from batchrun.simulate.server import make_app
from batchrun.simulate.serving import SimServer, serve, start_simulator
from batchrun.simulate.validate import ROLES, known_model, validate

__all__ = [
    "MODELS",
    "ROLES",
    "Answer",
    "SimConfig",
    "SimServer",
    "SimStats",
    "answer_for",
    "completion_for",
    "known_model",
    "make_app",
    "reasoning_for",
    "serve",
    "start_simulator",
    "usage_for",
    "validate",
]
