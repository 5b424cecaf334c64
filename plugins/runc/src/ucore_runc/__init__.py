"""Rootless runc and crun engines for ucore (udocker's R modes)."""

import os as _os

#: From the project's one VERSION file (a link to it here, a copy in a built distribution),
#: so that the core and its plugins are released at one version.
with open(_os.path.join(_os.path.dirname(__file__), "VERSION"), encoding="ascii") as _file:
    __version__ = _file.read().strip()
