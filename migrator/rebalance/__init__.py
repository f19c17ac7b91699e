"""The rebalancer: capacity readings, a pure planner, Alertmanager alerts, guardrails, applying plans.

- :mod:`~migrator.rebalance.planner`: pure logic, readings in, a plan with a reason per choice out.
- :mod:`~migrator.rebalance.readings`: measuring cells (per organization) into a cache table.
- :mod:`~migrator.rebalance.store`: alerts, plans, decisions, pins and the pause flag in the control DB.
- :mod:`~migrator.rebalance.alerts`: the Alertmanager webhook payload, deduplication.
- :mod:`~migrator.rebalance.policy`: guardrails (pause, concurrency, cooldown, pins) as data for the planner.
- :mod:`~migrator.rebalance.service`: making plans from readings and applying them through Operations.

See docs/adr/0006-rebalancing-policy.md.
"""
