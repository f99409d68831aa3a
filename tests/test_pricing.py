from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.errors import UsageError
from batchrun.pricing import Price, PriceTable, normalize_model


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # the figures the brief requires, exact names
        ("anthropic/claude-3-opus", (15.0, 75.0)),
        ("claude-3-opus-20240229", (15.0, 75.0)),
        ("anthropic/claude-3-5-sonnet", (3.0, 15.0)),
        ("claude-3-5-sonnet-20240620", (3.0, 15.0)),
        ("anthropic/claude-3-haiku", (0.25, 1.25)),
        ("claude-3-haiku-20240307", (0.25, 1.25)),
        ("gpt-4o", (2.5, 10.0)),
        ("gpt-4o-mini", (0.15, 0.6)),
        ("gpt-4-turbo", (10.0, 30.0)),
        ("gpt-3.5-turbo", (0.5, 1.5)),
        # provider prefix dropped or added
        ("claude-3-opus", (15.0, 75.0)),
        ("anthropic/claude-3-opus-20240229", (15.0, 75.0)),
        ("openai/gpt-4o-mini", (0.15, 0.6)),
        # an unlisted date suffix, both styles
        ("claude-3-haiku-20250101", (0.25, 1.25)),
        ("gpt-4o-2024-08-06", (2.5, 10.0)),
        ("openai/gpt-4o-2024-11-20", (2.5, 10.0)),
        # an exact snapshot row beats its family
        ("gpt-4o-2024-05-13", (5.0, 15.0)),
        # case does not split a family
        ("Anthropic/Claude-3-Opus", (15.0, 75.0)),
    ],
)
def test_lookup(model: str, expected: tuple[float, float]) -> None:
    price = PriceTable.default().get(model)
    assert price is not None
    assert (price.input_per_mtok, price.output_per_mtok) == expected


@pytest.mark.parametrize(
    "model",
    [
        "llama-3-70b",
        "claude-3",  # a prefix of a family is not the family
        "gpt-4o-mini-tts",
        "gpt-3.5-turbo-0613",  # not a date suffix: its own (older) price, unknown here
        "",
    ],
)
def test_unknown_model_is_none(model: str) -> None:
    table = PriceTable.default()
    assert table.get(model) is None
    assert table.cost(model, 1000, 1000) is None


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("anthropic/claude-3-opus", "claude-3-opus"),
        ("claude-3-opus-20240229", "claude-3-opus"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("a/b/GPT-4o", "gpt-4o"),
        ("gpt-4-0613", "gpt-4-0613"),
    ],
)
def test_normalize_model(model: str, family: str) -> None:
    assert normalize_model(model) == family


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        (0, 0, 0.0),
        (1_000_000, 0, 15.0),
        (0, 1_000_000, 75.0),
        (2_000, 500, 2_000 * 15 / 1e6 + 500 * 75 / 1e6),
    ],
)
def test_cost_arithmetic(prompt: int, completion: int, expected: float) -> None:
    assert Price(15.0, 75.0).cost(prompt, completion) == pytest.approx(expected)
    assert PriceTable.default().cost("claude-3-opus", prompt, completion) == pytest.approx(expected)


def test_price_rejects_negative_and_nan() -> None:
    with pytest.raises(ValueError, match="input_per_mtok"):
        Price(-1.0, 1.0)
    with pytest.raises(ValueError, match="output_per_mtok"):
        Price(1.0, float("nan"))


def test_overrides_new_and_existing_models() -> None:
    base = PriceTable.default()
    table = base.with_overrides(
        {"my-model": {"input": 1, "output": 2}, "gpt-4o": {"input": 3.0, "output": 4.0}}
    )
    assert table.get("my-model") == Price(1.0, 2.0)
    assert table.get("gpt-4o") == Price(3.0, 4.0)
    # the override speaks for the family too
    assert table.get("openai/gpt-4o-2024-08-06") == Price(3.0, 4.0)
    # the original table is unchanged, and other models keep their price
    assert base.get("gpt-4o") == Price(2.5, 10.0)
    assert base.get("my-model") is None
    assert table.get("gpt-4o-mini") == Price(0.15, 0.6)
    assert len(table) == len(base) + 1


def test_latest_override_speaks_for_the_family() -> None:
    table = (
        PriceTable.default()
        .with_overrides({"openai/gpt-4o": {"input": 1, "output": 2}})
        .with_overrides({"gpt-4o": {"input": 3, "output": 4}})
    )
    assert table.get("openai/gpt-4o") == Price(1.0, 2.0)  # exact entries stay exact
    assert table.get("azure/gpt-4o-2024-08-06") == Price(3.0, 4.0)


def test_partial_override_keeps_the_other_figure() -> None:
    table = PriceTable.default().with_overrides({"claude-3-opus-20240229": {"output": 60}})
    assert table.get("claude-3-opus-20240229") == Price(15.0, 60.0)
    # a snapshot override does not reprice the family's undated name
    assert table.get("anthropic/claude-3-opus") == Price(15.0, 75.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"new-model": {"input": 1.0}}, "model 'new-model': missing key 'output'"),
        ({"gpt-4o": {"inptu": 1.0}}, "model 'gpt-4o': unknown key 'inptu'"),
        ({"gpt-4o": {"input": "cheap"}}, "model 'gpt-4o': input must be a number"),
        ({"gpt-4o": {"output": True}}, "model 'gpt-4o': output must be a number"),
        ({"gpt-4o": {"input": -1}}, "model 'gpt-4o': input must be >= 0"),
        ({"gpt-4o": 3}, "model 'gpt-4o': expected a table"),
    ],
)
def test_bad_overrides(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError) as info:
        PriceTable.default().with_overrides(overrides)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_load_merges_over_defaults(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        '[models."anthropic/claude-3-opus"]\ninput = 12\noutput = 60.5\n\n'
        '[models."local/llama-3-8b"]\ninput = 0.0\noutput = 0.1\n',
        encoding="utf-8",
    )
    table = PriceTable.load(path)
    assert table.get("anthropic/claude-3-opus") == Price(12.0, 60.5)
    assert table.get("llama-3-8b") == Price(0.0, 0.1)
    assert table.get("gpt-4o") == Price(2.5, 10.0)
    assert table.cost("claude-3-opus", 1_000_000, 1_000_000) == pytest.approx(72.5)


def test_load_empty_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text("", encoding="utf-8")
    assert PriceTable.load(path).models == PriceTable.default().models


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[models.x\n", "not valid TOML"),
        ('[models."gpt-4o"]\ninput = "1"\n', "model 'gpt-4o': input must be a number"),
        ('[models."new"]\ninput = 1\n', "model 'new': missing key 'output'"),
        ("[prices]\nx = 1\n", "unknown key 'prices'"),
        ("models = 3\n", "key 'models' must be a table"),
    ],
)
def test_load_bad_file_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError) as info:
        PriceTable.load(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(UsageError, match=r"price file .* not found") as info:
        PriceTable.load(path)
    assert str(path) in str(info.value)
