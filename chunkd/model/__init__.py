"""Pure values: stream states and records, the part planner, key templates, manifests."""
