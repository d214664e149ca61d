"""The fan-out benchmark and the light viewer (the load tester): see bench/fanout.py."""
