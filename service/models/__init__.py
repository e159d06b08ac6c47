"""Uploaded classifier files ("models" in the API), stored by content hash per team."""
