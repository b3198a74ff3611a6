"""``python -m segserve_client``: the ``segserve-client`` command."""

from segserve_client.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
