"""An S3 endpoint that goes down and comes back with its data: moto stopped and started again, or
Ceph RGW's radosgw killed and started again while its monitor and OSD keep every object and upload.

`rclone serve s3` is not one: a restart loses its open multipart uploads.
"""

from __future__ import annotations

from tests.support.ceph_rgw import CephRGW
from tests.support.s3_servers import MotoServer

PausableServer = MotoServer | CephRGW


def stop_endpoint(server: PausableServer) -> None:
    """Connections refused and open ones cut; the data stays."""
    if isinstance(server, CephRGW):
        server.stop_gateway()
    else:
        server.stop()


def start_endpoint(server: PausableServer) -> None:
    """The same endpoint back, with what it held before `stop_endpoint`."""
    if isinstance(server, CephRGW):
        server.start_gateway()
    else:
        server.start()
