"""The audience side: the reply policy (which comments get answered, and how)."""
