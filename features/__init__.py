"""featserve's feature layer.

The modules at the top import no store client and nothing from the rooms
below, so training and tools load them cheaply: definitions (``registry``,
``dtypes``, ``keys``, ``derive``, ``budgets``, ``settings``, ``errors``) and
the small mechanics the read path and the stores share (``timing``,
``deadline``, ``breaker``, ``burst_log``, ``redaction``).  ``serving`` holds
the read path, ``stores`` the online and backing stores (and sizing them),
``ingest`` the write path.  ``pyproject.toml``'s import-linter contracts keep
it so.  Import what you need from its module.
"""
