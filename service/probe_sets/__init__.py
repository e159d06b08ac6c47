"""Uploaded probe sets: archives of images (with optional labels), validated on upload."""
