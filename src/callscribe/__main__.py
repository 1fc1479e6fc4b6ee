import sys

from callscribe.cli import main

sys.exit(main())
