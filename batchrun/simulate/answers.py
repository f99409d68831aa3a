"""Deterministic answers: the same request body always gets the same text, usage and tool call.

Nothing here knows HTTP or the wire shape (``wire.py`` encodes an Answer as JSON or SSE).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from batchrun.simulate.toolargs import INVALID_KINDS, arguments_for
from batchrun.tools import normalize_tool_choice, normalize_tools

_WORDS = [
    "amber", "delta", "river", "quiet", "lantern", "orbit", "maple", "cobalt",
    "harbor", "meadow", "signal", "paper", "velvet", "summit", "ember", "canyon",
    "willow", "pixel", "falcon", "garnet", "prairie", "tide", "beacon", "cedar",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Answer:
    """What the simulator answers a valid request with, before any wire encoding."""

    model: str
    #: The assistant's text (sent as null content when ``tool_call`` is set).
    text: str
    finish: str
    usage: dict[str, int]
    tool_call: dict[str, Any] | None = None
    #: ``reasoning_content`` the answer carries, if any.
    reasoning: str | None = None
    #: How the tool call's arguments were made invalid (see toolargs.py), if they were.
    invalid: str | None = None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _digest(*parts: str) -> int:
    h = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big")


def _claude(model: str) -> bool:
    return "claude" in model


def _prompt_seed(body: dict[str, Any], *salt: str) -> int:
    """A digest of what the answer depends on: the model, the system prompt, the messages."""
    model = str(body.get("model", ""))
    system = str(body.get("system") or "")
    convo = "\x1e".join(
        f"{m.get('role')}:{_text(m.get('content'))}" for m in body.get("messages") or []
    )
    return _digest(*salt, model, system, convo)


def options_in(prompt: str) -> list[str]:
    """The options a prompt offers in "one of: a, b, c" (up to the end of its line)."""
    lower = prompt.lower()
    if "one of:" not in lower:
        return []
    tail = prompt[lower.index("one of:") + len("one of:") :].split("\n", 1)[0]
    return [o for o in (p.strip().strip(".!?;:").strip() for p in tail.split(",")) if o]


def completion_for(body: dict[str, Any]) -> tuple[str, str]:
    """(text, finish_reason) the simulator answers for a request body.

    Depends on the model, the system prompt and the messages only (and on ``max_tokens``
    and ``stop_sequences``, which cut the text). A last user message holding
    "one of: a, b, c" is answered with one of those options.
    """
    model = str(body.get("model", ""))
    messages = body.get("messages") or []
    seed = _prompt_seed(body)
    last_user = next(
        (_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""
    )
    if "one of:" in last_user.lower():
        options = options_in(last_user)
        words = [options[seed % len(options)]] if options else ["none"]
    else:
        n = 3 + seed % 10
        words = ["sim", "reply:"] + [_WORDS[(seed >> (4 * i)) % len(_WORDS)] for i in range(n)]
    claude = _claude(model)
    finish = "end_turn" if claude else "stop"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, int) and len(words) > max_tokens:
        words = words[:max_tokens]
        finish = "max_tokens" if claude else "length"
    text = " ".join(words)
    for stop in body.get("stop_sequences") or ():
        if stop and stop in text:
            text = text[: text.index(stop)]
            finish = "stop_sequence" if claude else "stop"
    return text, finish


def usage_for(body: dict[str, Any], text: str | None = None) -> dict[str, int]:
    """Usage the simulator reports: ~4 characters a prompt token + 3 a message; a word an
    answer token. ``text``: the answer, when already computed."""
    messages = body.get("messages") or []
    prompt = sum(-(-len(_text(m.get("content"))) // 4) + 3 for m in messages)
    if body.get("system"):
        prompt += -(-len(str(body["system"])) // 4) + 3
    if text is None:
        text = completion_for(body)[0]
    completion = max(1, text.count(" ") + 1 if text else 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _forced_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """The tool a request forces: ``required`` (the first; the word or ``{"type"}``), or one
    named in the documented ``{"type": "function", "function": {"name"}}`` or Anthropic's
    ``{"type": "tool", "name"}``."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools and choice == "required":
        return dict(tools[0])
    if not tools or not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind == "required":
        return dict(tools[0])
    name = choice.get("name") if kind == "tool" else (choice.get("function") or {}).get("name")
    return next((dict(t) for t in tools if t.get("name") == name), None) if name else None


def _tool_call(
    body: dict[str, Any], invalid_rate: float, invalid_kinds: tuple[str, ...], fault_seed: int
) -> tuple[dict[str, Any] | None, str | None]:
    """The forced tool's call (arguments generated from its schema), and how it was made
    invalid, if it was."""
    tool = _forced_tool(body)
    if tool is None:
        return None, None
    name = str(tool["name"])
    convo = json.dumps(body.get("messages"), sort_keys=True)
    seed = _digest(convo, name)
    args, invalid = arguments_for(
        tool.get("input_schema"),
        convo,
        invalid_rate=invalid_rate,
        invalid_kinds=invalid_kinds,
        seed=fault_seed,
    )
    call = {
        "id": f"call_{seed:016x}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }
    return call, invalid


def reasoning_for(body: dict[str, Any], rate: float) -> str | None:
    """The ``reasoning_content`` for a body, for a share ``rate`` of prompts (else None).

    Which prompts, and the text, depend on the prompt alone (not on ``stream``), so a rerun,
    streamed or not, gets the same reasoning.
    """
    seed = _prompt_seed(body, "reasoning")
    if seed >= rate * 2**64:
        return None
    n = 4 + seed % 6
    words = [_WORDS[(seed >> (5 * i)) % len(_WORDS)] for i in range(n)]
    return f"Considering the request: {' '.join(words)}. That settles the answer."


def neutral_body(body: dict[str, Any]) -> dict[str, Any]:
    """A validated OpenAI-shaped body in the gateway's names (``stop`` → ``stop_sequences``,
    tools and tool choice in the neutral shape), so that both flavours answer alike."""
    out = dict(body)
    if "stop" in out:
        stop = out.pop("stop")
        out["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    if out.get("tools"):
        out["tools"] = list(normalize_tools(out["tools"]))
    if "tool_choice" in out:
        out["tool_choice"] = normalize_tool_choice(out["tool_choice"], out.get("tools"))
    return out


def answer_for(
    body: dict[str, Any],
    *,
    reasoning_rate: float = 0.0,
    keyed: str | None = None,
    invalid_rate: float = 0.0,
    invalid_kinds: tuple[str, ...] = INVALID_KINDS,
    seed: int = 0,
) -> Answer:
    """The whole answer to a validated request body; ``keyed``: the text an answer key
    chose for it (see ``graded.py``), instead of the prompt's own. A forced tool is called
    with arguments from its schema, a share ``invalid_rate`` of them invalid."""
    if keyed is not None:
        text, finish = keyed, "end_turn" if _claude(str(body.get("model", ""))) else "stop"
    else:
        text, finish = completion_for(body)
    usage = usage_for(body, text)
    call, invalid = _tool_call(body, invalid_rate, invalid_kinds, seed)
    model = body["model"]
    if call is not None:
        finish = "tool_use" if _claude(model) else "tool_calls"
    reasoning = reasoning_for(body, reasoning_rate)
    return Answer(
        model=model,
        text=text,
        finish=finish,
        usage=usage,
        tool_call=call,
        reasoning=reasoning,
        invalid=invalid,
    )
