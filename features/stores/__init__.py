"""Online and backing stores behind one interface (``base``); ``factory`` opens one by name,
``capacity`` sizes a Redis for a load."""
