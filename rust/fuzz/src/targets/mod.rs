//! The fuzz targets, one function over raw bytes each.

pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod pack;
pub mod quantize;
pub mod recurrent;
pub mod requantize;
