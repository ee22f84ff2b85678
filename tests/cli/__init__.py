"""Tests of the ``retract`` command line (a package, so its module names stay unique)."""
