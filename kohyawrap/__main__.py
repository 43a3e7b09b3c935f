"""``python -m kohyawrap`` is the same as the ``kohyawrap`` command."""

from kohyawrap.cli import main

if __name__ == "__main__":
    main()
