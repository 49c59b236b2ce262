"""`make bench`: the service under wrk, as production runs it; see bench/README.md."""
