import sys

from genfleet.cli import main

sys.exit(main(["worker", *sys.argv[1:]]))
