"""tokenbudget."""
