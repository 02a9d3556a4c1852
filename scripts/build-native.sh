#!/usr/bin/env sh
# Builds the kernel addon during `npm install`. A failed build is not fatal: kvlab then says so and runs
# on the pure-TypeScript reference backend.
if node-gyp rebuild -C native > native-build.log 2>&1; then
  echo "kvlab: native addon built (native/build/Release/kvlab_native.node)"
else
  echo "kvlab: native addon build failed (see native-build.log); the reference backend will be used"
fi
exit 0
