import sys

from nxrecipes.cli import main

sys.exit(main())
