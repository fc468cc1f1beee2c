/** Options of the bench orchestrator (bench/run.ts) and its --help text. */

export const HELP = `Benchmark orchestrator.

  npm run bench -- [--mode embedded|distributed|both] [--events N] [--duration S] [--chart]   (= node dist/bench/run.js ...)

(a) starts the null server (bench/null-server.ts) in a child process and runs the load generator against it: the
    generator's ceiling on this machine;
(b) embedded mode: starts the real server (\`node dist/main.js\`, random free port, temp DATA_DIR, API_KEYS=<fresh
    sk_test key>, none of the distributed settings), waits for GET /healthz, runs the generator (meter creation,
    load, consumer lag, freshness, exactness), stops the server (SIGTERM, SIGKILL after 10 s), removes the temp dir;
(c) distributed mode: the same against the server on Kafka + ClickHouse + PostgreSQL (KAFKA_BROKERS, CLICKHOUSE_URL,
    DATABASE_URL from the environment, else from \`deploy/up.sh\`'s export lines), with a fresh topic, ClickHouse
    database, PostgreSQL schema and consumer group per run (bench-<ts> / bench_<ts>), dropped at the end. Topology
    \`all\` = one process running every role; \`split\` = one gateway + one aggregator + one api process (the generator
    streams to the gateway and manages meters / reads summaries on the api).
Consumer lag: the generator samples GET /healthz of every process running an aggregator (\`aggregator.stored\`) while
it loads and converges, against the events it has had acknowledged (stream-load.ts --health-url, LagSampler).
Prints a markdown table on stdout, writes bench/results/<timestamp>.json and, with --chart, <timestamp>.svg; server
logs go to bench/results/<timestamp>-server.log (embedded) and <timestamp>-distributed[-<role>].log.

Flags:
  --mode embedded|distributed|both            which server runs (default embedded); the null server runs in every mode
  --topology all|split                        distributed process layout (default all)
  --events N --duration S --connections N     passed to the generator (defaults 2,000,000 / 30 / 16)
  --batch N --customers N --client raw|http   passed to the generator (defaults 100 / 100 / raw)
  --timestamps                                passed to the generator (explicit event timestamps)
  --rate R                                    offered load for the meterd runs, events/s (default 0: closed loop);
                                              e.g. half the closed-loop figure for the p99 at half of max load. The
                                              null server always runs closed loop: it is the generator's ceiling
  --poll-mode adaptive|all --freshness-timeout S   passed to the generator
  --health-interval MS                        consumer lag sampling period (default 250)
  --meter-settle-ms MS                        pause between meter creation and load (default 2500 with split, else 0)
  --kafka-partitions N                        partitions of the fresh topic (default: the server's, 8)
  --keep-data                                 do not drop the run's topic / database / schema
  --null-events N --null-duration S           the null-server run (defaults max(events, 10M) / min(duration, 5))
  --chart                                     also write an SVG chart (throughput, latency, lag over time)
  --skip-null | --skip-server                 run only the null server / only the meterd server(s)
  --server-entry PATH                         server entry point (default <repo>/dist/main.js)
  --data-parent DIR                           where the temp DATA_DIR is created (default the OS temp dir)
  --results-dir DIR                           default <repo>/bench/results
Exit status: 0 when every target ran and verified, 1 otherwise.
`;
