"""Tools that tests, benchmarks and ``make serve`` share: a local Redis, a served service, a TCP
proxy for faults, the load driver and its statistics.  Not part of the Bento."""
