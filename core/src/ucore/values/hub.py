"""Docker Hub's names: the default registry, as references and settings spell it, and where
its API is served.

A module of its own, importing nothing, because :mod:`ucore.config` (on every ``ucore run``'s
start-up) and :mod:`ucore.values.oci` (the validated references, kept off it) both need them.
"""

#: Docker Hub, the default registry, as a reference names it (``docker.io/library/ubuntu``).
DOCKER_HUB = "docker.io"
#: Where Docker Hub's registry API is actually served.
DOCKER_HUB_API = "registry-1.docker.io"
#: Docker Hub's legacy name, which references and credential files may still use.
DOCKER_HUB_INDEX = "index.docker.io"
