"""links.txt files: parsing and validating URLs, batches, downloads into the staging folder."""
