import sys

from genfleet.cli import main

sys.exit(main())
