"""Pure folds: what records do to endpoint state and to KPI aggregates."""
