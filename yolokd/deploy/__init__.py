"""Deployment: Ultralytics export plus parity checks, exported-model validation and the Jetson bundle."""
