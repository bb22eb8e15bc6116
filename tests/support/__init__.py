"""Helpers shared by Clarion's test suites."""
