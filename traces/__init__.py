"""Routing traces: our Parquet format, importers of public formats, a synthetic generator, and `moe-trace`."""
