"""Metrics, webhook alerts and their rules, error tracking, Sentry: usable by every feature."""
