-- Prints one machine-readable line when wrk finishes, for bench/run.py (latencies in µs).
-- Defining only done() keeps wrk's fast path: requests are not built or parsed in Lua.

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, '
      .. '"read": %d, "write": %d, "timeout": %d, "status": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.timeout, e.status, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
