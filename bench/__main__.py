"""``python -m bench``: every benchmark, each beside its baseline (the live connector's sustained run cut to 60 s;
``python -m bench.polygon_live`` runs the full 600 s)."""

from bench import (
    agents,
    correlation,
    discovery,
    execution,
    lifecycle,
    patterns,
    pipeline,
    polygon_live,
    portfolio,
    replay,
    risk,
    risk_latency,
    sessions,
    storage,
)

pipeline.main()
replay.main([])
agents.main()
correlation.main()
patterns.main([])
discovery.main([])
portfolio.main([])
lifecycle.main([])
polygon_live.main(["--seconds", "60"])
sessions.main()
storage.main()
execution.main([])
risk.main([])
risk_latency.main([])
