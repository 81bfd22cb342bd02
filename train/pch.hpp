#pragma once
// Precompiled header of the training engine: LibTorch's headers take ~15 s to
// parse, so every train/ and cli/torch/ file gets them from here once.
#include <torch/torch.h>
