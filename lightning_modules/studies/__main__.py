import sys

from lightning_modules.studies.cli import main

sys.exit(main())
