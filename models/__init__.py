"""The fraud model: its input schema, its synthetic training data, its training and loading."""

__all__: list[str] = []
