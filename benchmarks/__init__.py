"""Measurements: decode speed (bench), evaluation of the embedded models (evaluate), training throughput
(throughput), the app's CPU latency (latency) and where a decode forward's time goes (profile_decode).

Programs, not library code: each prints a table and writes JSON/CSV with the machine it ran on (results/ holds the
committed runs). They stand on sdar_core and training; nothing imports them but the tests.
"""
