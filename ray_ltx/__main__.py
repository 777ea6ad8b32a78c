import sys

from ray_ltx.cli import main

sys.exit(main())
