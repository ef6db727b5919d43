"""Redis-backed state shared by every replica: key names, the client, and the state modules."""
