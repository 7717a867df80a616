import sys

from lightning_modules.search.cli import main

sys.exit(main())
