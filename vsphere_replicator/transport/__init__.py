"""Where disk bytes are read and written: one small seam, several transports.

`BlockSource.read(offset, length)` and `BlockSink.write(offset, data)` /
`flush()` are all a transport implements; chunking, alignment, parallelism
and verification live above it (see `vsphere_replicator.transport.base`).
"""

from vsphere_replicator.errors import TransportError
from vsphere_replicator.transport.base import BlockSink, BlockSource, copy_areas, plan_chunks, read_chunks
from vsphere_replicator.transport.http import DatastoreHTTPSource, flat_extent_path
from vsphere_replicator.transport.memory import MemoryBlockDevice
from vsphere_replicator.transport.mounted import FileBlockSink, FileBlockSource
from vsphere_replicator.transport.nbd import NBDBlockDevice, NBDEndpoint
from vsphere_replicator.transport.throttle import Throttle
from vsphere_replicator.transport.vddk import VDDKBlockDevice, VDDKServer

__all__ = [
    "BlockSink",
    "BlockSource",
    "DatastoreHTTPSource",
    "FileBlockSink",
    "FileBlockSource",
    "MemoryBlockDevice",
    "NBDBlockDevice",
    "NBDEndpoint",
    "Throttle",
    "TransportError",
    "VDDKBlockDevice",
    "VDDKServer",
    "copy_areas",
    "flat_extent_path",
    "plan_chunks",
    "read_chunks",
]
