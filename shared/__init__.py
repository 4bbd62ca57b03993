"""Code shared by every tokenpool service: environment, model store, protocol."""
