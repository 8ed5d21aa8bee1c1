import sys

from avatar_api.cli import main

sys.exit(main())
