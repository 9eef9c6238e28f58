"""The training engine: model resolution, the KD criterion and the Ultralytics trainer subclass."""
