"""The read path inside the service: the resolver, its cache, and the store tiers it asks."""
