"""Stand-alone tools, each behind one CLI verb: data build/extract/mirror/inspect, the evaluation
report, and the benchmarks. They may use the driver (a benchmark runs ``train``), never the CLI."""
