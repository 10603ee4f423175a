"""Where batch work runs (``--engine`` of ``ingest`` and ``batch-search``): ``local``, this
process; ``spark``, the partitions of the active Spark session (``spark-submit``'s, or a
local one)."""

ENGINES = ("local", "spark")
