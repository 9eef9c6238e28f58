"""Benchmark harness: versioned protocols (``cfg/protocols``), one process per run, resumable, tabulated results."""
