"""Converted model dir -> Core ML bundle for iOS, built with the MIL builder (no torch)."""
