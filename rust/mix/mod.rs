//! Mix: schedule math, the step -> global batch sampler, and the loader ring buffer.
