#pragma once
#include <vector>

#include "attention.h"

namespace kvlab {

// Softmax attention where KV head g's keys are prefix[g]'s rows followed by a.heads[g]'s (a shared read-only
// context and a sequence's own rows), read in place. Same masking (pos[j] <= q_pos[i]) and dtype rule as
// attention(); no statistics; out must be given.
void attention_prefixed(const Attention& a, const std::vector<HeadView>& prefix);

}  // namespace kvlab
