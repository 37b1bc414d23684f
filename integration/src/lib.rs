//! weir-integration
