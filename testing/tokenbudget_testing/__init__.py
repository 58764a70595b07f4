"""Test tooling the product wheel does not ship: a stand-in provider (`upstream`) and the demo (`demo`)."""
