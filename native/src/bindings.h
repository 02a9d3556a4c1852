#pragma once
// The addon's bindings outside addon.cc, each file registering its functions on the exports.
#include <napi.h>

namespace kvlab::bind {

// runStep (step.cc).
void register_step(Napi::Env env, Napi::Object exports);
// Tests: the next runStep fails at op index `op` (-1: none).
void step_fail_next_at(long op);
// streamRead, fmaPeak, poolWaitProbe, poolPlacementProbe (probes.cc).
void register_probes(Napi::Env env, Napi::Object exports);
// mapFile, mapRegion, mappedSize, alignOffset, mapRegions (mmap.cc).
void register_mmap(Napi::Env env, Napi::Object exports);

}  // namespace kvlab::bind
