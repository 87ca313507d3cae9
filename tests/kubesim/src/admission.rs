//! Admission (placeholder while being written).
