"""Scale-out on Ray: the same job split into row-range shards, each an ordinary run.

Nothing here imports Ray at module level but :mod:`batchrun.cluster.driver` (and only when
it runs): a plain install never pays Ray's import. The coordinator and the leased limiter
are plain Python, tested without Ray; the driver wraps the coordinator in a Ray actor.
"""
