#!/usr/bin/env bash
# Three daemons in one cluster on this machine (a real etcd and S3 server): exec round
# trip asked of a sprite's own host and forwarded by another, failover time from kill -9
# of a host to the first exec through another, creates per second on one host vs three.
# Needs root; removes every host, sprite and server it made.
#
#   sudo ./bench/cluster.sh                    # EXECS=300 KILLS=5 CREATES=24
#   sudo EXECS=100 KILLS=2 ./bench/cluster.sh  # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p sprite --bench cluster
