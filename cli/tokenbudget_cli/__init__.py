"""kubectl tokenbudget: the platform team's plugin (status, report, export, simulate)."""
