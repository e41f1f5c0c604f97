import sys

from fastae.bench.cli import main

sys.exit(main())
