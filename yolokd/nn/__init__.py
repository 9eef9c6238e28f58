"""Trainable building blocks shared by the methods (connectors / adapters)."""
