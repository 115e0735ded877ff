"""Data-enabled microcredit (issue #6).

- ``scorecard``: weight-of-evidence scorecards over any table (train, score, reason codes);
- ``evaluate``: cross-validated AUC, KS and Gini beside a gradient-boosting baseline.
"""
