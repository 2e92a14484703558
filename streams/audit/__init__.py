"""The audit tools' pure logic: ``tidemark explain``'s causation tree (``tree``) and the bars behind a bar-derived event
(``window``), and the re-run comparison (``compare``). What each event links to is part of the contract:
``schemas.links``."""
