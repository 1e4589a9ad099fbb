//! Per-loop keep-alive pool of idle upstream connections. (in progress)
