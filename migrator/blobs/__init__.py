"""Blob stores and the blob copier."""
