"""ucore-bwrap: an example execution engine for ucore on bubblewrap (``bwrap``)."""
