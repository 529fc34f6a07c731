"""``python -m plait``: the ``plait`` command line."""

from plait._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
