"""The write path: validating updates, reading tables, materializing them, rewarming Redis."""
