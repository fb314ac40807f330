"""featserve's feature layer.

Definitions at the top (``registry``, ``dtypes``, ``keys``, ``derive``,
``budgets``, ``settings``, ``errors``, ``timing``) import no store client,
so training and tools can load them cheaply; ``serving`` holds the read
path, ``stores`` the online and backing stores, ``ingest`` the write path.
Import what you need from its module.
"""
