"""The builtin layer unpacker: flattens an image's layers into a container root filesystem,
treating every layer as hostile (see ``shared/safety-rules.md``, "Unpacking layers").

The machinery lives in :mod:`.extract` (imported only when unpacking, so that ``ucore run``
does not pay for it): ``unpack_image``, ``Limits``, ``modes_path``.
"""
