"""Hook implementations of ucore-fakechroot, loaded through the ``ucore`` entry-point group.

It will register the Fakechroot engine (F1-F4); until then it only
proves that the distribution installs and that ucore discovers it (``ucore plugins``).
"""
