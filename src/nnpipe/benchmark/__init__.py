"""Throughput benchmarks measured the way the reference measures them."""
