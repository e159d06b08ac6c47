"""The `shiftaudit` command line: one light dispatcher for every command of the product.

Each command's module is imported only when that command is chosen (pip's design), so
`shiftaudit --help` and `shiftaudit submit --help` load neither torch nor the server, and
a light install (the client alone) runs `submit`, `report` and `compare` and explains what
to install for the rest.
"""
