#!/usr/bin/env bash
# The image's default command: a one-node Ray running the service as KubeRay would (same ports,
# metrics on 8080, dashboard on 8265), for `docker run -p 8000:8000 -p 9000:9000 segserve:0.1.0`.
# KubeRay does not use it: it starts `ray start` itself and submits serveConfigV2.
set -euo pipefail
ray start --head --dashboard-host=0.0.0.0 --metrics-export-port=8080 --disable-usage-stats
# Blocks and streams logs; SIGINT/SIGTERM shuts the applications down.
exec serve run --address auto /app/serve_config.yaml
