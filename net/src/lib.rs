//! sipmesh-net
