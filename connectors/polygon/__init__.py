"""Polygon connector: live aggregates and trades over the WebSocket feed, gaps and history over REST."""
