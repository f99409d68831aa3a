"""Benchmarks of batchrun against its simulator (``make bench``)."""
