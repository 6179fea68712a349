import sys

from jepa_wm.cli import main

sys.exit(main())
