"""The store and what is kept in it: blobs, references, images, containers.

:mod:`.store` (the on-disk layout, locking, atomic writes) with :mod:`.leases` (who holds what,
and locks for filesystems where ``flock`` fails) and :mod:`.trees` (removing trees safely);
:mod:`.manifest`, :mod:`.layers` and :mod:`.images` (verified manifests, configs and layer
blobs); :mod:`.rootfs`, :mod:`.stream` and :mod:`.extract` (unpacking hostile layers into a
root, which the builtin ``unpack`` plugin calls) and :mod:`.inroot` (reading and naming paths
inside a root, as ``chroot`` would); :mod:`.containers` (creating, naming, locking and removing
containers); :mod:`.treewalk`, :mod:`.archive` and :mod:`.rootfs_archive` (export, import, save
and load).
"""
