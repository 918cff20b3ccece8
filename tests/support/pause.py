"""An S3 endpoint that goes down and comes back with its data: moto stopped and started again, or
Ceph RGW's radosgw killed and started again while its monitor and OSD keep every object and upload.

`rclone serve s3` is not one: a restart loses its open multipart uploads.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    """A server hanging (SIGSTOP): connections are accepted by the kernel and never answered, the
    case a refused connection does not show. SIGCONT on the way out, whatever happened."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
