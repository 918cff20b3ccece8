"""One file's upload: the job, growth, resume, finalize, and what they read from disk."""
