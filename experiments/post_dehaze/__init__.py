"""A blind post-dehazing step after the network (two tries, neither admissible; no file ships)."""
