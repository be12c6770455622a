#!/usr/bin/env bash
# Images, side by side in one run: building `dev` vs `debian` from nothing (time, size),
# storing each as an image volume (time, bytes into the object store), and create →
# first exec p50 from each. Needs root and the package registries; removes what it made.
#
#   sudo ./bench/images.sh               # everything (about 5 minutes)
#   sudo SKIP_BUILD=1 ./bench/images.sh  # only storing and creating
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p sprite --bench images
