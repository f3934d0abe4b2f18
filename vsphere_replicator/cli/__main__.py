"""`python -m vsphere_replicator.cli`: the same as the `vsphere-replicator` command."""

import sys

from vsphere_replicator.cli import main

sys.exit(main())
