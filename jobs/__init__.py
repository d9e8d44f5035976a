"""Command-line entry points and the offline jobs (Ray Data / Ray Train) they launch."""
