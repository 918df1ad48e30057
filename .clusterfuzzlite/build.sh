#!/bin/bash -eu
# ClusterFuzzLite runs this as $SRC/build.sh. The build is OSS-Fuzz's, shared rather than
# copied: see ci/oss-fuzz/build.sh.
exec bash "$SRC/stopfuzz/ci/oss-fuzz/build.sh" "$@"
