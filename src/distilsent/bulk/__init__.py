"""Bulk scoring of files: the engine interface (:mod:`.engine`), the local engine (:mod:`.local`: chunks, parts,
resume) and the Ray engine (:mod:`.ray_engine`), both built on the interface and neither on the other.

May import the runtime, data and the foundation; never training, serving or the command line.
"""
