"""S3: the client, the one gateway every S3 call goes through, retries, breaker, bandwidth, listings."""
