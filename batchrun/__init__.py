"""batchrun: run large batches of prompts through chat-completion APIs, crash-safe, to Parquet."""

from __future__ import annotations

__version__ = "0.1.0"
