"""The ``tokenpool`` command line."""
