"""What uploaded models and probe sets share: team-scoped rows pointing at stored bytes.

Each row is one (team, content) pair; the bytes live once in the content-addressed storage,
whoever uploaded them, so bytes may only be deleted when no row of any kind points at them.
Upload, list, get and delete are implemented once here for both.
"""
