"""Small utilities every layer may use: atomic files, error types, defaults, seeds, names, devices."""
