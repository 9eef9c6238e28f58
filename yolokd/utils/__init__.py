"""Small utilities shared by the engine, the methods and the CLI."""
