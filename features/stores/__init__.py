"""Online and backing stores behind one interface (``base``); ``factory`` opens one by name."""
