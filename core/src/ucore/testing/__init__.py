"""Test support for ucore and its plugins: a real registry, images built from scratch."""
