"""The run path: from a container and a command line to a process in the container.

:mod:`.runspec` (the run's specification: argv, environment, user, mounts) with
:mod:`.hostauth` and :mod:`.hostfiles` (the container's own account and resolver files),
:mod:`.launcher` (what an MPI rank needs from its launcher) and :mod:`.readonly` (read-only
views for engines that bind only read-write); :mod:`.spawn` (starting, signalling and reaping
the engine's process) and :mod:`.mountpoints` (removing what a runtime left in the root). Names
inside the root are resolved by :mod:`ucore.storage.inroot`. ``ucore run`` of an existing
container imports this package, :mod:`ucore.values.model`, the store and the chosen engine.
"""
