"""chunkd: watch a drop folder, upload videos to S3 as resumable multipart uploads."""

__version__ = "0.1.0"
