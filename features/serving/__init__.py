"""The read path inside the service: resolver, cache, circuit breakers and the tiers they guard."""
