"""bonefrac.evaluation: everything downstream of a run's predictions (never retrains).

- ``metrics``: ``compute_metrics`` (bootstrap CIs), ``apply_temperature``
- ``thresholds``: ``choose_threshold``, ``tune_threshold`` (val only)
- ``calibration``: ``fit_temperature``, ECE, Brier, ``calibrate_run``
- ``evaluate``: ``evaluate_run`` (metrics.json, plots, subgroups, external manifests)
- ``compare``: ``compare_runs``, ``delong_test``
- ``plots``, ``report`` (``build_report``), ``rundir`` (reading a run directory)
"""
