"""A project's model: its input schema and input builder, its training, checks and loading."""

__all__: list[str] = []
