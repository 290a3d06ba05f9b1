"""Small shared utilities (crash-safe files, cache home, offline detection): see :mod:`irepa.utils.io`."""
