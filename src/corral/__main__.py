"""``python -m corral``: the ``corral`` command (used by `corral up` to migrate in a child)."""

from corral.cli import main

if __name__ == "__main__":
    main()
