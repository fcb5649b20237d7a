"""The shared-memory media plane's transport: rings, doorbells and the link between the
local workers of one host (issue 12; measured in bench/shm_hop.py, described in
ARCHITECTURE.md). Standard library and msgspec only; what a packet means is sfu/plane/'s."""
