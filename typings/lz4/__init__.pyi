# Stubs for the parts of lz4 (4.x, which ships no type information) that aioworkflow uses.
# Read by pyright (stubPath "typings", its default) and mypy (mypy_path) alike.
