"""Test-only servers for the cross-distribution integration tests (token auth, fault injection)."""
