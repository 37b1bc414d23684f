//! weir-node
