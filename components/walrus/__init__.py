"""Walrus: the S3-compatible object store of the cloud tier."""
