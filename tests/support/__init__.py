"""Test support shared by the suites (never imported by the product)."""
