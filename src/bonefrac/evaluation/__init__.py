"""bonefrac.evaluation: everything downstream of a run's predictions (never retrains).

- ``thresholds``: ``choose_threshold``, ``tune_threshold`` (val only)
- ``calibration``: ``fit_temperature``, ECE, Brier, ``calibrate_run``
- ``evaluate``: ``evaluate_run`` (metrics.json, plots, subgroups, external manifests)
- ``compare``: ``compare_runs``, ``delong_test``
- ``plots``, ``report`` (``build_report``); the run directory itself is :mod:`bonefrac.rundir`
"""
