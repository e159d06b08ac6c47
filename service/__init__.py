"""The shiftaudit REST service: uploads, audits and stored reports, scoped by team.

Builds on the engine (`shiftaudit`); the engine never imports from here.
"""
