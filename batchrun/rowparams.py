"""Per-row request parameters (``--params-column``): an object per row with any of the
parameters below, checked with the job's ranges in the validation pass, sent for that row
only. They live in the row's :class:`~batchrun.records.Request` (its params, its max_tokens,
its prompt estimate), so budgets and a request's identity include them. A parameter the
provider's profile refuses is refused per row as it is for the whole job."""

from __future__ import annotations

from typing import Any

from batchrun import fastjson
from batchrun.errors import InputError, UsageError
from batchrun.io.readers import Where
from batchrun.job import RequestParams
from batchrun.profiles import Profile, refusal

#: What a row may set for itself (the API's names).
ROW_PARAMS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "frequency_penalty",
    "stop_sequences",
    "system",
    "metadata",
)


def row_overrides(
    value: Any, model: str, profile: Profile, file: str, column: str, where: Where
) -> dict[str, Any]:
    """The row's own parameters (empty: none); raises InputError naming file, line/row and
    column, with the parameter and its allowed range, or the provider that refuses it."""

    def refuse(message: str, hint: str | None = None) -> InputError:
        return InputError(message, file=file, column=column, hint=hint, **where)

    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = fastjson.loads(value.encode("utf-8", "surrogatepass"))
        except (ValueError, UnicodeDecodeError):
            raise refuse("params is a string but not a JSON object") from None
    if not isinstance(value, dict):
        raise refuse(f"params must be an object with any of {', '.join(ROW_PARAMS)}")
    # Parquet structs come back with every field, null ones included: null is "not set".
    given = {k: v for k, v in value.items() if v is not None}
    unknown = [k for k in given if k not in ROW_PARAMS]
    if unknown:
        raise refuse(
            f"params has unknown key {unknown[0]!r}; a row may set {', '.join(ROW_PARAMS)}"
        )
    # Job.validate refuses these for the whole job; a row's own would reach the wire
    # unchecked and fail there (OpenAI answers 400 to top_k), after other rows were paid.
    if (why := refusal(profile, given)) is not None:
        raise refuse(f"params: {why[0]}", hint=why[1])
    stop = given.get("stop_sequences")
    if stop is not None and not isinstance(stop, list):
        raise refuse("params.stop_sequences must be a list of strings")
    checked = dict(given)
    if stop is not None:
        checked["stop_sequences"] = tuple(stop)
    try:
        # The job's own checks and ranges, on these parameters alone.
        RequestParams(model=model, **checked)
    except UsageError as exc:
        raise refuse(f"params: {exc.message}") from None
    except TypeError as exc:  # a value of a kind no comparison takes
        raise refuse(f"params has a value of the wrong type: {exc}") from None
    return given
