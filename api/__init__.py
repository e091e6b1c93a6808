"""The Litestar API: REST history, live bars over WebSocket, health, metrics and the dashboard.

Build the app with `api.app.create_app`; run it with ``tickmesh api`` (`api.cli`).
"""
