"""Hook implementations of ucore-proot, loaded through the ``ucore`` entry-point group.

It will register the PRoot engine (P1/P2); until then it only
proves that the distribution installs and that ucore discovers it (``ucore plugins``).
"""
