"""Uploaded probe sets (archives of images), validated by the engine, stored by content hash."""
