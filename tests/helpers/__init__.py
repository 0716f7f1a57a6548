"""Helpers shared by the unit, integration and e2e tests (test-only: product packages never import them)."""
