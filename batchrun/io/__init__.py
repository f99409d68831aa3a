"""Streaming input readers and the Parquet output writer."""
