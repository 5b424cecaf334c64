"""Hook implementations of ucore-runc, loaded through the ``ucore`` entry-point group.

It will register the runc and crun engines (R1-R3); until then it only
proves that the distribution installs and that ucore discovers it (``ucore plugins``).
"""
