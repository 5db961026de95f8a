"""flagstack.bench: benchmarks for each layer, all writing JSON + markdown to bench/results/."""
