"""The end-to-end benchmark's parts (bench/bench_e2e.py runs them): load generator, bridge process,
clients per protocol, statistics and the report."""
