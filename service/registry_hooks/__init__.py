"""Incoming registry hooks: a new model version becomes an audit with the team defaults."""
