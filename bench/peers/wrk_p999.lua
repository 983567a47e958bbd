-- wrk prints p50..p99 with --latency; the benchmark also reports p99.9 (docs/performance.md).
done = function(summary, latency, requests)
  io.write(string.format("p99.9_us %d\n", latency:percentile(99.9)))
end
