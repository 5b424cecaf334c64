"""Plain values: what the rest of ucore passes around, with no behaviour beyond validating
themselves.

:mod:`.model` (containers, run specifications, mounts, devices: on ``ucore run``'s start-up
path, so plain dataclasses), :mod:`.oci` (digests, references, platforms, descriptors, stored
images: validated with attrs, kept off that path), :mod:`.events` (what the event bus carries)
and :mod:`.errors` (the typed errors and their exit statuses). They import nothing of ucore
but each other, so every other package may use them.
"""
