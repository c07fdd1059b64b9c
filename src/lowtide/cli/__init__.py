"""The ``lowtide`` command line."""
