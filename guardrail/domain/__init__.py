"""Pure domain: no I/O, no clock reads, no event loop. Everything runs on data time."""
