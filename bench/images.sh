#!/usr/bin/env bash
# Images, side by side in one run: building `dev` vs `debian` from nothing (time, size),
# a registry pull vs `skopeo copy`, the bytes a second image sharing a base adds,
# storing each as an image volume (time, bytes into the object store), and create →
# first exec p50 from each. Needs root and the package registries; removes what it made.
#
#   sudo ./bench/images.sh               # everything (about 5 minutes)
#   sudo SKIP_BUILD=1 ./bench/images.sh  # only storing and creating
#   sudo ONLY_REGISTRY=1 ./bench/images.sh  # only the registry figures (pull, shared layers, creates)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p sprite --bench images
