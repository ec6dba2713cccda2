//! sipmesh: a peer-to-peer mesh of stateful SIP proxy/registrar supernodes.
