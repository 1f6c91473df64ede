"""Estimators: stages that turn a design into variance-component estimates (reml/ml, mackay, ...)."""
