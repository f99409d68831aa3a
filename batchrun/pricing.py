"""Model prices, for estimating what a run cost from the tokens it used.

The bundled table holds **list prices as of 2026-11**, in USD per million tokens (input
and output priced separately), for models served by the AI/ML API gateway and common
OpenAI-compatible models. The gateway's own prices may differ from the providers' list
prices, and prices change: every figure here is an *estimate* and can be overridden,
from Python (:meth:`PriceTable.with_overrides`) or from a TOML file
(:meth:`PriceTable.load`)::

    [models."anthropic/claude-3-opus"]
    input = 15.0     # USD per million prompt tokens
    output = 75.0    # USD per million completion tokens
    batch_input = 7.5     # optional: the Batch API's rates (default: half the list price)
    batch_output = 37.5

Lookups forgive the two ways one model goes by several names: a provider prefix
(``anthropic/claude-3-opus`` is ``claude-3-opus``) and a dated snapshot suffix
(``claude-3-opus-20240229``, ``gpt-4o-2024-08-06``). An exact entry always wins, so a
snapshot priced differently from its family gets its own row.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from batchrun.errors import UsageError
from batchrun.io.files import open_regular

_MTOK = 1_000_000

#: What the Batch API costs against the list price, where a price file says nothing else.
BATCH_DISCOUNT = 0.5
_KEYS = ("input", "output", "batch_input", "batch_output")

#: (USD per million input tokens, USD per million output tokens), list prices as of 2026-11.
_DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "anthropic/claude-3-opus": (15.0, 75.0),
    "claude-3-opus-20240229": (15.0, 75.0),
    "anthropic/claude-3-sonnet": (3.0, 15.0),
    "claude-3-sonnet-20240229": (3.0, 15.0),
    "anthropic/claude-3-5-sonnet": (3.0, 15.0),
    "claude-3-5-sonnet-20240620": (3.0, 15.0),
    "claude-3-5-sonnet-20241022": (3.0, 15.0),
    "anthropic/claude-3-5-haiku": (0.8, 4.0),
    "claude-3-5-haiku-20241022": (0.8, 4.0),
    "anthropic/claude-3-haiku": (0.25, 1.25),
    "claude-3-haiku-20240307": (0.25, 1.25),
    "gpt-4o": (2.5, 10.0),
    # The first gpt-4o snapshot kept its launch price; without this exact row the
    # date-suffix rule would price it as today's gpt-4o.
    "gpt-4o-2024-05-13": (5.0, 15.0),
    "gpt-4o-mini": (0.15, 0.6),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4": (30.0, 60.0),
    "gpt-3.5-turbo": (0.5, 1.5),
}

# A dated snapshot: Anthropic style "-20240229" or OpenAI style "-2024-08-06".
_DATE_SUFFIX = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class Price:
    """USD per million input (prompt) tokens and per million output (completion) tokens."""

    input_per_mtok: float
    output_per_mtok: float
    #: The Batch API's rates (None: BATCH_DISCOUNT of the list price).
    batch_input_per_mtok: float | None = None
    batch_output_per_mtok: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "input_per_mtok",
            "output_per_mtok",
            "batch_input_per_mtok",
            "batch_output_per_mtok",
        ):
            value = getattr(self, name)
            if value is None and name.startswith("batch_"):
                continue
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def batch(self) -> Price:
        """The price of a request sent through the Batch API."""
        return Price(
            self.batch_input_per_mtok
            if self.batch_input_per_mtok is not None
            else self.input_per_mtok * BATCH_DISCOUNT,
            self.batch_output_per_mtok
            if self.batch_output_per_mtok is not None
            else self.output_per_mtok * BATCH_DISCOUNT,
        )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The cost in USD of this many prompt and completion tokens."""
        return (
            prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        ) / _MTOK


def normalize_model(model: str) -> str:
    """The family name of a model: no provider prefix, no date suffix, lower case."""
    return _DATE_SUFFIX.sub("", model.rsplit("/", 1)[-1].strip().lower())


class PriceTable:
    """Model name → :class:`Price`; an immutable value (overrides return a new table)."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        # Who speaks for a family: an undated name over a dated snapshot (a snapshot may
        # keep an old price), else the later entry; overrides are inserted last (see
        # with_overrides), so overriding "claude-3-opus" also reprices its other snapshots.
        by_age = sorted(self._prices.items(), key=lambda kv: not _DATE_SUFFIX.search(kv[0]))
        self._by_family = {normalize_model(name): price for name, price in by_age}

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"

    def __len__(self) -> int:
        return len(self._prices)

    @property
    def models(self) -> list[str]:
        """The model names with an entry, in table order."""
        return list(self._prices)

    @classmethod
    def default(cls) -> PriceTable:
        """The bundled list prices (as of 2026-11)."""
        return cls({name: Price(i, o) for name, (i, o) in _DEFAULT_PRICES.items()})

    def with_overrides(self, overrides: Mapping[str, Mapping[str, float]]) -> PriceTable:
        """A new table with ``{"model": {"input": usd_per_mtok, "output": usd_per_mtok}}`` merged in.

        A model this table already prices may override only one of the two figures; a new
        model needs both. Raises UsageError naming the model and key on a bad entry.
        """
        prices = dict(self._prices)
        for model, entry in overrides.items():
            where = f"model {model!r}"
            if not isinstance(entry, Mapping):
                raise UsageError(f"{where}: expected a table with keys input and output")
            unknown = sorted(set(entry) - set(_KEYS))
            if unknown:
                raise UsageError(
                    f"{where}: unknown key {unknown[0]!r}",
                    hint="the keys are input and output (and batch_input, batch_output)",
                )
            base = self.get(model)
            figures: dict[str, float | None] = {}
            for key in _KEYS:
                value = entry.get(key)
                if value is None and key.startswith("batch_"):
                    # Kept from the bundled entry only when the list price is kept too.
                    keep = base is not None and not ({"input", "output"} & set(entry))
                    figures[key] = getattr(base, f"{key}_per_mtok") if keep and base else None
                    continue
                if value is None:
                    if base is None:
                        raise UsageError(
                            f"{where}: missing key {key!r}",
                            hint="a model without a bundled price needs both input and output",
                        )
                    value = base.input_per_mtok if key == "input" else base.output_per_mtok
                # bool is an int to Python, but `input = true` is surely a mistake.
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise UsageError(f"{where}: {key} must be a number, got {value!r}")
                if not math.isfinite(value) or value < 0:
                    raise UsageError(f"{where}: {key} must be >= 0 USD per million tokens")
                figures[key] = float(value)
            prices.pop(model, None)  # re-inserted last so it wins its family (see __init__)
            inp, out = figures["input"], figures["output"]
            assert inp is not None and out is not None
            prices[model] = Price(inp, out, figures["batch_input"], figures["batch_output"])
        return PriceTable(prices)

    @classmethod
    def load(cls, path: Path) -> PriceTable:
        """The default table with the ``[models."name"]`` entries of a TOML file merged over it."""
        try:
            with open_regular(path, "price file") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise UsageError(f"{path}: cannot read price file: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise UsageError(
                f"price file {path} is not UTF-8 text (byte {e.start}: {e.reason})"
            ) from None
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"{path}: not valid TOML: {e}") from e
        unknown = sorted(set(data) - {"models"})
        if unknown:
            raise UsageError(
                f"{path}: unknown key {unknown[0]!r}",
                hint='prices go in tables like [models."gpt-4o"] with input and output',
            )
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise UsageError(f"{path}: key 'models' must be a table of models")
        try:
            return cls.default().with_overrides(models)
        except UsageError as e:
            raise UsageError(f"{path}: {e.message}", hint=e.hint) from e

    def get(self, model: str) -> Price | None:
        """The price of ``model``: an exact entry, else one of the same family; None if unknown."""
        exact = self._prices.get(model)
        return exact if exact is not None else self._by_family.get(normalize_model(model))

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Estimated cost in USD, or None when the model has no price."""
        price = self.get(model)
        return None if price is None else price.cost(prompt_tokens, completion_tokens)
