"""Hook implementations of ucore-singularity, loaded through the ``ucore`` entry-point group.

It will register the Apptainer/Singularity engine (S1); until then it only
proves that the distribution installs and that ucore discovers it (``ucore plugins``).
"""
