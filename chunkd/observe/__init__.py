"""What chunkd tells the world: logs, metrics, events, HTTP probes, systemd, status views."""
