"""Graded answers: an answer key (prompts and their expected answers, read from an
evaluation's input file) and the share of keyed prompts answered correctly, so that a
nightly evaluation — and a regression — can be rehearsed offline.

Whether a prompt is answered correctly depends on the seed and the prompt alone, through a
digest ``u`` in [0, 1): right when ``u < correct_rate``. The same seed and rate answer the
same prompts right on every run, and with one seed a lower rate only turns right answers
wrong: runs at 0.9 and then 0.7 differ exactly in the prompts with 0.7 <= u < 0.9
(:meth:`AnswerKey.answers_correctly` tells which).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchrun.errors import UsageError
from batchrun.io.readers import iter_batches
from batchrun.simulate.answers import _digest, _text, options_in

#: Answered when the prompt offers no other option; chosen to contain no common answer.
NO_ANSWER = "I cannot tell"


def prompt_of(messages: Any) -> str | None:
    """The text of the last user message: what a keyed prompt is looked up by."""
    if not isinstance(messages, list):
        return None
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return _text(users[-1].get("content")) if users else None


@dataclass(frozen=True)
class AnswerKey:
    """Expected answers by prompt text, and how often the simulator gives them."""

    expected: dict[str, str]
    correct_rate: float = 1.0
    seed: int = 0

    @classmethod
    def load(cls, path: Path, column: str, *, correct_rate: float, seed: int) -> AnswerKey:
        """The rows of a JSONL or Parquet file with a prompt (a ``messages`` list, else a
        ``prompt`` text) and a value in ``column``; ValueError naming the file otherwise."""
        expected: dict[str, str] = {}
        try:
            for batch in iter_batches(path):
                for row in batch.rows:
                    if row is None or row.get(column) is None:
                        continue
                    prompt = prompt_of(row.get("messages"))
                    if prompt is None and isinstance(row.get("prompt"), str):
                        prompt = row["prompt"]
                    if prompt is not None:
                        expected[prompt] = str(row[column])
        except UsageError as e:
            raise ValueError(f"answers file: {e}") from None
        if not expected:
            raise ValueError(
                f"answers file {path}: no row has a prompt (messages or prompt) and a value in column {column!r}"
            )
        return cls(expected, correct_rate, seed)

    def answers_correctly(self, prompt: str) -> bool:
        return _digest("answers", str(self.seed), prompt) < self.correct_rate * 2**64

    def answer(self, body: dict[str, Any]) -> str | None:
        """The answer to a keyed prompt (the expected one, or a wrong one); None if unkeyed."""
        prompt = prompt_of(body.get("messages"))
        expected = None if prompt is None else self.expected.get(prompt)
        if prompt is None or expected is None:
            return None
        if self.answers_correctly(prompt):
            return expected
        # A wrong answer no rule grades right: no option equal to or containing the expected.
        wrong = [o for o in options_in(prompt) if expected.strip().casefold() not in o.casefold()]
        return wrong[_digest("wrong", str(self.seed), prompt) % len(wrong)] if wrong else NO_ANSWER
