"""Hook implementations of ucore-gpu, loaded through the ``ucore`` entry-point group.

It will register NVIDIA GPU and InfiniBand device providers; until then it only
proves that the distribution installs and that ucore discovers it (``ucore plugins``).
"""
