"""ucore: pull Docker/OCI images and run them as an ordinary user.

The core is deliberately small: it owns the store, the hook specifications and the event bus;
registries, unpackers and execution engines are plugins (some of them builtin).
"""

__version__ = "0.1.0"
