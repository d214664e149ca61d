"""Moved to streaming/wire_path.py (the load tester ships in the package); kept for bench scripts."""

from streaming.wire_path import DatagramHandler, WirePath, dtls_transport, stop_decoder_threads, wire_path

__all__ = ["DatagramHandler", "WirePath", "dtls_transport", "stop_decoder_threads", "wire_path"]
