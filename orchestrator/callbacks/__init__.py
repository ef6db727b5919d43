"""Vendor callbacks: profiles (which URL and keys), the receiver (verify, parse, make durable), watchers."""
