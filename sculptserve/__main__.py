"""``python -m sculptserve``: the ``sculpt`` command line."""

from sculptserve.cli import main

if __name__ == "__main__":
    main()
