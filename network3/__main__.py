"""``python -m network3 data [--idx-dir DIR] [--out FILE]``: build the book's
mnist.pkl.gz (downloading and verifying the MNIST files if needed)."""

import sys

from .data import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "data":
        sys.exit("usage: python -m network3 data [--idx-dir DIR] [--out FILE]")
    main(args[1:])
