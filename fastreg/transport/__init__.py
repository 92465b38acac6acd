"""Transports: bytes from sockets into the SIP core and back. No SIP rules here."""
