"""Schedules (when rooms should be live), the scheduler that wakes at their boundaries, the reconciler."""
