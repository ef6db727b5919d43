"""Faithful local emulators of the vendor APIs, for tests, benchmarks and the demo."""
