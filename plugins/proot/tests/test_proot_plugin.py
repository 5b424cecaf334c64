"""ucore-proot installs, and ucore discovers and registers it through its entry point."""

from __future__ import annotations

from ucore.testing.plugins import check_registration


def test_registered_through_the_ucore_entry_point() -> None:
    row = check_registration("proot", "ucore_proot.plugin", "ucore-proot")
    assert row["hooks"] == ["ucore_register_engines"]
