"""tickmesh edge: venue adapters, validation, batching publisher and collectors.

Imports only ``core.schema``, ``core.subjects`` and ``core.errors`` from core.
"""
