import sys

from canbridge.cli import main

sys.exit(main())
