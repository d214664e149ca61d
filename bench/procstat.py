"""Moved to signaling/procstat.py (forumcast loadtest reads the server CPU with it)."""

from signaling.procstat import cpu_seconds, cpu_split, descendants, tree_cpu_seconds, tree_cpu_split

__all__ = ["cpu_seconds", "cpu_split", "descendants", "tree_cpu_seconds", "tree_cpu_split"]
